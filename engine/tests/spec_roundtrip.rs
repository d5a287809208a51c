//! Property: a loaded pipeline's resolved document (what a run records) loads again, via
//! `load_resolved`, into an equal pipeline with the same resolved text, whatever the
//! strings, numbers, inputs and `--set` overrides in it.

mod spec_support;

use std::collections::BTreeMap;

use itera_engine::spec;
use proptest::prelude::*;

/// One generated stage: a `train` or a `command`, reading from earlier stages.
#[derive(Debug, Clone)]
enum Gen {
    Train {
        steps: u64,
        lr: f64,
        hidden: usize,
        tags: Vec<String>,
    },
    Command {
        run: String,
        outputs: BTreeMap<String, String>,
        reads: Vec<usize>,
    },
}

fn stage_strategy() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (
            1u64..=i64::MAX as u64,
            1e-9f64..0.999,
            1usize..64,
            prop::collection::vec(".{0,8}", 0..3)
        )
            .prop_map(|(steps, lr, h, tags)| Gen::Train {
                steps,
                lr,
                hidden: h * 8,
                tags
            }),
        (
            "\\PC{0,24}",
            prop::collection::btree_map("[a-z][a-z0-9_]{0,6}", "[a-z./]{1,10}", 0..3),
            prop::collection::vec(0usize..8, 0..3)
        )
            .prop_map(|(run, outputs, reads)| Gen::Command {
                run,
                outputs,
                reads
            }),
    ]
}

/// The pipeline file for generated stages (stage i may read stages before it).
fn document(seed: i64, description: &str, stages: &[Gen]) -> String {
    let mut doc = toml::Table::new();
    let mut pipeline = toml::Table::new();
    pipeline.insert("name".into(), "generated".into());
    pipeline.insert("description".into(), description.into());
    pipeline.insert("seed".into(), seed.into());
    doc.insert("pipeline".into(), pipeline.into());
    let mut table = toml::Table::new();
    for (i, stage) in stages.iter().enumerate() {
        let mut t = toml::Table::new();
        match stage {
            Gen::Train {
                steps,
                lr,
                hidden,
                tags,
            } => {
                t.insert("kind".into(), "train".into());
                t.insert("steps".into(), (*steps as i64).into());
                t.insert("lr".into(), (*lr).into());
                let mut model = toml::Table::new();
                model.insert("hidden_size".into(), (*hidden as i64).into());
                t.insert("model".into(), model.into());
                t.insert("tags".into(), tags.clone().into());
                // A train stage needs tokens: read from a command stage of its own.
                let mut src = toml::Table::new();
                src.insert("kind".into(), "command".into());
                src.insert("run".into(), "make tokens".into());
                table.insert(format!("s{i}_src"), src.into());
                let mut inputs = toml::Table::new();
                inputs.insert("tokens".into(), format!("s{i}_src").into());
                t.insert("inputs".into(), inputs.into());
            }
            Gen::Command {
                run,
                outputs,
                reads,
            } => {
                t.insert("kind".into(), "command".into());
                t.insert("run".into(), run.clone().into());
                let outs: toml::Table = outputs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect();
                t.insert("outputs".into(), outs.into());
                let mut inputs = toml::Table::new();
                let refs: Vec<toml::Value> = reads
                    .iter()
                    .filter(|r| **r < i)
                    .map(|r| format!("s{r}").into())
                    .collect();
                if !refs.is_empty() {
                    inputs.insert("upstream".into(), refs.into());
                }
                t.insert("inputs".into(), inputs.into());
            }
        }
        table.insert(format!("s{i}"), t.into());
    }
    doc.insert("stages".into(), table.into());
    toml::to_string(&doc).expect("generated documents serialize")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn resolved_pipelines_reload_equal(
        seed in 0i64..=i64::MAX,
        description in "\\PC{0,20}",
        stages in prop::collection::vec(stage_strategy(), 1..6),
        new_seed in proptest::option::of(0u32..1000),
    ) {
        let registry = spec_support::registry();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generated.toml");
        std::fs::write(&path, document(seed, &description, &stages)).unwrap();
        let overrides: Vec<String> = new_seed.map(|s| format!("pipeline.seed={s}")).into_iter().collect();
        let p = spec::load(&path, &overrides, &registry).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(p.seed, new_seed.map_or(seed as u64, u64::from));
        let again = spec::load_resolved(&p.resolved_toml, &p.source, &p.base_dir, &registry)
            .unwrap_or_else(|e| panic!("{e}\n{}", p.resolved_toml));
        prop_assert_eq!(&again.resolved_toml, &p.resolved_toml);
        prop_assert_eq!(&again.name, &p.name);
        prop_assert_eq!(&again.description, &p.description);
        prop_assert_eq!(again.seed, p.seed);
        prop_assert_eq!(&again.slurm, &p.slurm);
        prop_assert_eq!(&again.source, &p.source);
        prop_assert_eq!(&again.base_dir, &p.base_dir);
        prop_assert_eq!(
            serde_json::to_value(&again.stages).unwrap(),
            serde_json::to_value(&p.stages).unwrap()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Loading never panics, whatever the file and `--set` arguments hold: it yields a
    /// pipeline or at least one rendered problem.
    #[test]
    fn mangled_files_and_overrides_never_panic(
        cut in 0usize..2000,
        cut_len in 0usize..40,
        insert in "\\PC{0,12}",
        set in "[a-z_.\"=\\[\\]{} 0-9-]{0,24}",
    ) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/valid/study.toml"
        ))
        .unwrap();
        let mut start = cut.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + cut_len).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mangled = format!("{}{insert}{}", &text[..start], &text[end..]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mangled.toml");
        std::fs::write(&path, mangled).unwrap();
        match spec::load(&path, &[set], &spec_support::registry()) {
            Ok(p) => prop_assert!(!p.stages.is_empty()),
            Err(e) => {
                prop_assert!(!e.is_empty());
                prop_assert!(e.to_string().contains("nothing was run"));
            }
        }
    }
}
