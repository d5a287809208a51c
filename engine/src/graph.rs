//! The stage graph of a pipeline: a petgraph DAG over stage names with edges upstream ->
//! downstream (from `inputs`), deterministic topological order, stage selection for
//! `--until`/`--only`, and text/DOT/Mermaid renderings for `itera dag`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::spec::{base_name, suggest, Pipeline, StageName};

/// Why a graph cannot be built or a selection made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// Stages depend on each other in a circle; `path` starts and ends with the same stage.
    #[error("dependency cycle: {}", path.join(" -> "))]
    CycleDetected { path: Vec<StageName> },
    /// A stage name (in an input or a selection) that the pipeline does not have.
    #[error("unknown stage `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownStage {
        name: String,
        suggestion: Option<String>,
    },
    /// `--until` and `--only` were both given.
    #[error("--until and --only cannot be combined: --until selects a stage and all it needs, --only exactly the stages named")]
    ConflictingSelection,
}

/// The pipeline's stages as a DAG.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<StageName, Vec<String>>,
    index: BTreeMap<StageName, NodeIndex>,
    kinds: BTreeMap<StageName, String>,
    /// Each stage's inputs as written: (upstream, label), slots in name order, the stages
    /// of a list slot in list order (the first model of `evaluate` is its reference).
    inputs: BTreeMap<StageName, Vec<(StageName, String)>>,
}

impl Dag {
    /// Builds the graph; unknown upstream stages and cycles are errors (`spec::load`
    /// rejects both already).
    pub fn new(p: &Pipeline) -> Result<Dag, GraphError> {
        let mut graph: DiGraph<StageName, Vec<String>> = DiGraph::new();
        let index: BTreeMap<StageName, NodeIndex> = p
            .stages
            .keys()
            .map(|name| (name.clone(), graph.add_node(name.clone())))
            .collect();
        let names: Vec<&str> = index.keys().map(String::as_str).collect();
        let mut inputs: BTreeMap<StageName, Vec<(StageName, String)>> = BTreeMap::new();
        for (name, spec) in &p.stages {
            let written = inputs.entry(name.clone()).or_default();
            for (slot, refs) in &spec.inputs {
                for (i, r) in refs.iter().enumerate() {
                    let Some(&up) = index.get(&r.stage) else {
                        return Err(GraphError::UnknownStage {
                            name: r.stage.clone(),
                            suggestion: suggest(&r.stage, &names),
                        });
                    };
                    let down = index[name];
                    // A list slot's position is shown: `models[0]` is the reference.
                    let at = if refs.len() > 1 {
                        format!("{slot}[{i}]")
                    } else {
                        slot.clone()
                    };
                    let label = match &r.output {
                        Some(o) => format!("{at}: {o}"),
                        None => at,
                    };
                    written.push((r.stage.clone(), label.clone()));
                    match graph.find_edge(up, down) {
                        Some(e) => graph[e].push(label),
                        None => {
                            graph.add_edge(up, down, vec![label]);
                        }
                    }
                }
            }
        }
        let dag = Dag {
            graph,
            index,
            kinds: p
                .stages
                .iter()
                .map(|(n, s)| (n.clone(), s.kind.clone()))
                .collect(),
            inputs,
        };
        dag.check_acyclic()?;
        Ok(dag)
    }

    fn check_acyclic(&self) -> Result<(), GraphError> {
        match cycles(&self.graph).into_iter().next() {
            Some(path) => Err(GraphError::CycleDetected { path }),
            None => Ok(()),
        }
    }

    /// Every stage, upstream before downstream; ties broken by name.
    pub fn topo_order(&self) -> Vec<StageName> {
        let mut waiting: BTreeMap<NodeIndex, usize> = self
            .graph
            .node_indices()
            .map(|i| {
                (
                    i,
                    self.graph
                        .neighbors_directed(i, Direction::Incoming)
                        .count(),
                )
            })
            .collect();
        let mut ready: BTreeSet<(&StageName, NodeIndex)> = waiting
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(i, _)| (&self.graph[*i], *i))
            .collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some((name, i)) = ready.pop_first() {
            order.push(name.clone());
            for down in self.graph.neighbors(i) {
                let n = waiting.get_mut(&down).expect("every node is counted");
                *n -= 1;
                if *n == 0 {
                    ready.insert((&self.graph[down], down));
                }
            }
        }
        order
    }

    /// The stages `s` reads from directly, sorted.
    pub fn upstream(&self, s: &str) -> Vec<StageName> {
        self.neighbors(s, Direction::Incoming)
    }

    /// The stages that read `s` directly, sorted.
    pub fn downstream(&self, s: &str) -> Vec<StageName> {
        self.neighbors(s, Direction::Outgoing)
    }

    fn neighbors(&self, s: &str, direction: Direction) -> Vec<StageName> {
        let Some(&i) = self.index.get(s) else {
            return Vec::new();
        };
        let names: BTreeSet<StageName> = self
            .graph
            .neighbors_directed(i, direction)
            .map(|n| self.graph[n].clone())
            .collect();
        names.into_iter().collect()
    }

    /// The stages to run: everything; or `until` and all its ancestors; or exactly `only`
    /// (whose inputs must then come from the cache or the selection: the executor decides).
    /// The name of a swept stage as written selects all its variants; a variant's full
    /// name selects that variant.
    pub fn select(
        &self,
        until: Option<&str>,
        only: &[String],
    ) -> Result<BTreeSet<StageName>, GraphError> {
        match (until, only) {
            (Some(_), [_, ..]) => Err(GraphError::ConflictingSelection),
            (None, []) => Ok(self.index.keys().cloned().collect()),
            (None, only) => {
                let mut selected = BTreeSet::new();
                for name in only {
                    selected.extend(self.resolve(name)?);
                }
                Ok(selected)
            }
            (Some(target), []) => {
                Ok(self.with_ancestors(&self.resolve(target)?.into_iter().collect()))
            }
        }
    }

    /// `stages` and every stage upstream of them, directly or indirectly. Names the
    /// graph does not have are ignored.
    pub fn with_ancestors(&self, stages: &BTreeSet<StageName>) -> BTreeSet<StageName> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = stages
            .iter()
            .filter_map(|n| self.index.get(n).copied())
            .collect();
        while let Some(i) = stack.pop() {
            if out.insert(self.graph[i].clone()) {
                stack.extend(self.graph.neighbors_directed(i, Direction::Incoming));
            }
        }
        out
    }

    /// The stages a name given by the user means: the stage of that name, or every variant
    /// of the swept stage written with that name (`train` -> `train@seq_len=64`, ...).
    pub fn resolve(&self, name: &str) -> Result<Vec<StageName>, GraphError> {
        if self.index.contains_key(name) {
            return Ok(vec![name.to_owned()]);
        }
        let variants: Vec<StageName> = self
            .index
            .keys()
            .filter(|n| base_name(n) == name)
            .cloned()
            .collect();
        if variants.is_empty() {
            let mut candidates: BTreeSet<&str> = self.index.keys().map(String::as_str).collect();
            candidates.extend(self.index.keys().map(|n| base_name(n)));
            return Err(GraphError::UnknownStage {
                name: name.to_owned(),
                suggestion: suggest(name, &candidates),
            });
        }
        Ok(variants)
    }

    /// One line per stage in topological order: `name (kind) <- upstream [input], ...`,
    /// the inputs as written (a list's order kept: `models[0]` is the reference).
    pub fn render_text(&self) -> String {
        let order = self.topo_order();
        let width = order
            .iter()
            .map(|n| n.len() + self.kinds[n].len() + 3)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for name in &order {
            let head = format!("{name} ({})", self.kinds[name]);
            let inputs: Vec<String> = self.inputs[name]
                .iter()
                .map(|(up, label)| format!("{up} [{label}]"))
                .collect();
            if inputs.is_empty() {
                let _ = writeln!(out, "{head}");
            } else {
                let _ = writeln!(out, "{head:width$}  <- {}", inputs.join(", "));
            }
        }
        out
    }

    /// Graphviz DOT, left to right; edges are labelled with the input names.
    pub fn render_dot(&self) -> String {
        let mut out = String::from("digraph pipeline {\n  rankdir=LR;\n  node [shape=box];\n");
        for name in self.topo_order() {
            let _ = writeln!(
                out,
                "  \"{name}\" [label=\"{name}\\n({})\"];",
                self.kinds[&name]
            );
        }
        for (from, to, labels) in self.sorted_edges() {
            let _ = writeln!(
                out,
                "  \"{from}\" -> \"{to}\" [label=\"{}\"];",
                labels.join(", ")
            );
        }
        out.push_str("}\n");
        out
    }

    /// Mermaid flowchart, left to right.
    pub fn render_mermaid(&self) -> String {
        let ids: BTreeMap<&StageName, String> = self
            .index
            .keys()
            .enumerate()
            .map(|(n, name)| (name, format!("s{n}")))
            .collect();
        let mut out = String::from("flowchart LR\n");
        for name in self.topo_order() {
            let _ = writeln!(
                out,
                "  {}[\"{name}<br/>({})\"]",
                ids[&name], self.kinds[&name]
            );
        }
        for (from, to, labels) in self.sorted_edges() {
            let _ = writeln!(
                out,
                "  {} -->|\"{}\"| {}",
                ids[from],
                labels.join(", "),
                ids[to]
            );
        }
        out
    }

    fn sorted_edges(&self) -> Vec<(&StageName, &StageName, &Vec<String>)> {
        let mut edges: Vec<_> = self
            .graph
            .edge_references()
            .map(|e| (&self.graph[e.source()], &self.graph[e.target()], e.weight()))
            .collect();
        edges.sort();
        edges
    }
}

/// The one cycle detector (the pipeline loader and [`Dag`] both use it): for each strongly
/// connected component that holds a cycle, the shortest path from its smallest node back
/// to itself (the first node repeated at the end), following edges; components ordered by
/// their smallest node.
pub(crate) fn cycles<N: Ord + Clone, E>(graph: &DiGraph<N, E>) -> Vec<Vec<N>> {
    let mut found: Vec<Vec<N>> = tarjan_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1 || graph.find_edge(c[0], c[0]).is_some())
        .map(|c| shortest_cycle(graph, &c))
        .collect();
    found.sort();
    found
}

/// Breadth-first from the component's smallest node back to itself, neighbours by order.
fn shortest_cycle<N: Ord + Clone, E>(graph: &DiGraph<N, E>, component: &[NodeIndex]) -> Vec<N> {
    let start = *component
        .iter()
        .min_by(|a, b| graph[**a].cmp(&graph[**b]))
        .expect("a strongly connected component is never empty");
    let mut previous: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph.neighbors(at).collect();
        next.sort_by(|a, b| graph[*a].cmp(&graph[*b]));
        next.dedup();
        for n in next {
            if !component.contains(&n) || previous.contains_key(&n) {
                continue;
            }
            previous.insert(n, at);
            if n == start {
                let mut path = vec![graph[start].clone()];
                let mut cur = at;
                while cur != start {
                    path.push(graph[cur].clone());
                    cur = previous[&cur];
                }
                path.push(graph[start].clone());
                path.reverse();
                return path;
            }
            queue.push_back(n);
        }
    }
    unreachable!("a strongly connected component with a cycle has one through each member")
}
