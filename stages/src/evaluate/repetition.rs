//! Measures of degenerate generation, computed on the words (whitespace-separated pieces)
//! of generated continuations (the prompt excluded), so they compare across tokenizers:
//!
//! - **repeated 4-gram share** (rep-4, Welleck et al. 2019): within each continuation, the
//!   share of its word 4-grams that repeat an earlier 4-gram of the same continuation,
//!   pooled over continuations: `Σ (4-grams − distinct 4-grams) / Σ 4-grams`. 0 for varied
//!   text; a model stuck in a loop approaches 1.
//! - **distinct-2** (Li et al. 2016): distinct word bigrams over all bigrams of all the
//!   continuations together: `|distinct bigrams| / Σ bigrams`. Low when the model says the
//!   same things whatever the prompt.
//!
//! Both are 0 when there is no 4-gram (or bigram) at all.

use std::collections::HashSet;

use crate::records::{Degeneration, RepetitionRecord};

/// A repeated-4-gram share above this flags a looping model (in the report's findings).
pub const LOOPING_THRESHOLD: f64 = 0.25;

/// The measures of a set of continuations.
pub fn measure<'a>(texts: impl IntoIterator<Item = &'a str>) -> RepetitionRecord {
    let mut words_total = 0u64;
    let mut four = 0u64;
    let mut four_repeated = 0u64;
    let mut bigrams = 0u64;
    let mut distinct_bigrams: HashSet<(&str, &str)> = HashSet::new();
    let mut continuations = 0u64;
    for text in texts {
        continuations += 1;
        let words: Vec<&str> = text.split_whitespace().collect();
        words_total += words.len() as u64;
        let mut seen = HashSet::new();
        for g in words.windows(4) {
            four += 1;
            if !seen.insert(g) {
                four_repeated += 1;
            }
        }
        for g in words.windows(2) {
            bigrams += 1;
            distinct_bigrams.insert((g[0], g[1]));
        }
    }
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    RepetitionRecord {
        continuations,
        words: words_total,
        repeated_4gram_share: share(four_repeated, four),
        distinct_2: share(distinct_bigrams.len() as u64, bigrams),
    }
}

/// The measures over a model's greedy and its sampled continuations.
pub fn degeneration(generations: &[crate::records::GenerationRecord]) -> Degeneration {
    Degeneration {
        greedy: measure(generations.iter().map(|g| g.greedy.as_str())),
        sampled: measure(generations.iter().map(|g| g.sampled.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_examples() {
        // "a b c d a b c d": 4-grams abcd bcda cdab dabc abcd -> 5, one repeats: 0.2.
        // Bigrams ab bc cd da ab bc cd -> 7, distinct 4.
        let m = measure(["a b c d a b c d"]);
        assert_eq!((m.continuations, m.words), (1, 8));
        assert!((m.repeated_4gram_share - 0.2).abs() < 1e-12);
        assert!((m.distinct_2 - 4.0 / 7.0).abs() < 1e-12);

        // A loop: "x y x y x y x y" (8 words): 4-grams xyxy yxyx xyxy yxyx xyxy -> 3 of 5
        // repeat; bigrams xy yx (7 in all, 2 distinct).
        let m = measure(["x y x y x y x y"]);
        assert!((m.repeated_4gram_share - 0.6).abs() < 1e-12);
        assert!((m.distinct_2 - 2.0 / 7.0).abs() < 1e-12);
        assert!(m.repeated_4gram_share > LOOPING_THRESHOLD);
    }

    #[test]
    fn repeats_count_within_a_continuation_and_bigrams_across() {
        // The same 4-gram in two continuations is not a repeat; the same bigram is not
        // distinct.
        let m = measure(["the cat sat down", "the cat sat down"]);
        assert_eq!(m.repeated_4gram_share, 0.0);
        // 6 bigrams, 3 distinct.
        assert!((m.distinct_2 - 0.5).abs() < 1e-12);
        // Too short for any 4-gram or bigram: zeros, not NaN.
        let m = measure(["hello", ""]);
        assert_eq!(
            (m.repeated_4gram_share, m.distinct_2, m.words),
            (0.0, 0.0, 1)
        );
    }
}
