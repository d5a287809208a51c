//! Weight-only quantization of the model's matrices, and its file format.
//!
//! - `int8`: symmetric, one f32 scale per output channel (row): `q = round(w / s)`,
//!   `s = max|w_row| / 127`, `q` in [-127, 127]; `w ~ q * s`.
//! - `int4`: symmetric, one f32 scale per group of `group` consecutive input columns of a
//!   row: `s = max|w_group| / 7`, `q` in [-7, 7]; `w ~ q * s`.
//!
//! Symmetric, without zero points: the weights are centred on zero (normal initialisation,
//! weight decay), so a zero point would buy little precision and cost a second stored
//! number per group and an extra multiply-add per group in the decoder's kernels.
//!
//! In `model.safetensors` a quantized tensor `NAME` of logical shape `[rows, cols]` is
//! stored as two tensors:
//! - int8: `NAME` (I8, `[rows, cols]`, row-major) and `NAME.scale` (F32, `[rows]`);
//! - int4: `NAME` (U8, `[rows, cols / 2]`): byte `k` of row `r` holds column `2k` in its
//!   low nibble and column `2k + 1` in its high nibble, each as `q + 8` (1..=15); and
//!   `NAME.scale` (F32, `[rows, cols / group]`).
//!
//! `__metadata__["quantization"]` is a JSON object: `{"scheme": ..., "group_size": ...,
//! "tensors": {NAME: "int8" | "int4", ...}}` naming every quantized tensor; every other
//! tensor is stored plainly (F32 or F16). docs/MODEL.md shows the ten lines of numpy that
//! dequantize a file.

use std::collections::BTreeMap;

use safetensors::Dtype;
use serde::{Deserialize, Serialize};

use crate::artifact::OutTensor;

/// `__metadata__` key of the quantization description.
pub const METADATA_KEY: &str = "quantization";
/// Suffix of a quantized tensor's scales.
pub const SCALE_SUFFIX: &str = ".scale";

/// How one matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    Int8,
    Int4,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Int8 => "int8",
            QuantFormat::Int4 => "int4",
        }
    }
}

/// `__metadata__["quantization"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantMetadata {
    /// The stage's scheme (`int8`, `int4`, `mixed`, or a custom recipe's name).
    pub scheme: String,
    /// Input columns per int4 scale.
    pub group_size: usize,
    /// Every quantized tensor and its format.
    pub tensors: BTreeMap<String, QuantFormat>,
}

/// Why a matrix cannot be quantized or a stored one read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("tensor `{name}` has {cols} columns, not a multiple of the int4 group size {group}: choose a group_size that divides it, or keep the tensor in int8/f16")]
    Group {
        name: String,
        cols: usize,
        group: usize,
    },
    #[error("group_size must be an even number of at least 2, found {0}")]
    GroupSize(usize),
    #[error("quantized tensor `{name}`: {problem}")]
    Stored { name: String, problem: String },
}

/// One quantized matrix (see the module documentation for the meaning of the fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    /// Input columns per scale (int4); `cols` for int8.
    pub group: usize,
    /// int8: `rows * cols` values as `i8` bits; int4: `rows * cols / 2` packed bytes.
    pub q: Vec<u8>,
    /// int8: `rows`; int4: `rows * cols / group`.
    pub scales: Vec<f32>,
}

fn scale_of(values: &[f32], levels: f32) -> f32 {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    max / levels
}

fn quantize_value(w: f32, scale: f32, limit: f32) -> i32 {
    if scale == 0.0 {
        0
    } else {
        (w / scale).round().clamp(-limit, limit) as i32
    }
}

impl Quantized {
    /// Per-row symmetric int8 of a row-major `[rows, cols]` matrix.
    pub fn int8(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "matrix values do not match its shape");
        let mut q = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows);
        for row in w.chunks_exact(cols.max(1)).take(rows) {
            let s = scale_of(row, 127.0);
            scales.push(s);
            q.extend(row.iter().map(|&v| quantize_value(v, s, 127.0) as i8 as u8));
        }
        Self {
            format: QuantFormat::Int8,
            rows,
            cols,
            group: cols,
            q,
            scales,
        }
    }

    /// Group-wise symmetric int4 of a row-major `[rows, cols]` matrix.
    pub fn int4(
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        group: usize,
    ) -> Result<Self, QuantError> {
        assert_eq!(w.len(), rows * cols, "matrix values do not match its shape");
        if group < 2 || !group.is_multiple_of(2) {
            return Err(QuantError::GroupSize(group));
        }
        if !cols.is_multiple_of(group) {
            return Err(QuantError::Group {
                name: name.to_owned(),
                cols,
                group,
            });
        }
        let mut q = vec![0u8; rows * cols / 2];
        let mut scales = Vec::with_capacity(rows * cols / group);
        for (r, row) in w.chunks_exact(cols).enumerate() {
            for (g, chunk) in row.chunks_exact(group).enumerate() {
                let s = scale_of(chunk, 7.0);
                scales.push(s);
                for (j, &v) in chunk.iter().enumerate() {
                    let c = g * group + j;
                    let nibble = (quantize_value(v, s, 7.0) + 8) as u8;
                    let byte = &mut q[r * cols / 2 + c / 2];
                    *byte |= if c.is_multiple_of(2) {
                        nibble
                    } else {
                        nibble << 4
                    };
                }
            }
        }
        Ok(Self {
            format: QuantFormat::Int4,
            rows,
            cols,
            group,
            q,
            scales,
        })
    }

    /// The integer level of element (`r`, `c`).
    pub fn level(&self, r: usize, c: usize) -> i32 {
        match self.format {
            QuantFormat::Int8 => self.q[r * self.cols + c] as i8 as i32,
            QuantFormat::Int4 => {
                let byte = self.q[(r * self.cols + c) / 2];
                let nibble = if c.is_multiple_of(2) {
                    byte & 15
                } else {
                    byte >> 4
                };
                nibble as i32 - 8
            }
        }
    }

    /// The scale of element (`r`, `c`).
    pub fn scale(&self, r: usize, c: usize) -> f32 {
        match self.format {
            QuantFormat::Int8 => self.scales[r],
            QuantFormat::Int4 => self.scales[r * (self.cols / self.group) + c / self.group],
        }
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        for (c, o) in out.iter_mut().enumerate().take(self.cols) {
            *o = self.level(r, c) as f32 * self.scale(r, c);
        }
    }

    /// The whole matrix dequantized, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_into(r, row);
        }
        out
    }

    /// Bytes stored (levels and scales).
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * self.scales.len()
    }

    /// The two tensors this matrix is stored as.
    pub fn out_tensors(&self, name: &str) -> [OutTensor; 2] {
        let (dtype, shape) = match self.format {
            QuantFormat::Int8 => (Dtype::I8, vec![self.rows, self.cols]),
            QuantFormat::Int4 => (Dtype::U8, vec![self.rows, self.cols / 2]),
        };
        let scale_shape = match self.format {
            QuantFormat::Int8 => vec![self.rows],
            QuantFormat::Int4 => vec![self.rows, self.cols / self.group],
        };
        [
            OutTensor {
                name: name.to_owned(),
                dtype,
                shape,
                data: self.q.clone(),
            },
            OutTensor {
                name: format!("{name}{SCALE_SUFFIX}"),
                dtype: Dtype::F32,
                shape: scale_shape,
                data: self.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            },
        ]
    }

    /// Reads a stored matrix back from its level tensor and its scale tensor.
    pub fn from_stored(
        name: &str,
        format: QuantFormat,
        group_size: usize,
        (dtype, shape, levels): (Dtype, &[usize], &[u8]),
        (scale_dtype, scale_shape, scales): (Dtype, &[usize], &[u8]),
    ) -> Result<Self, QuantError> {
        let bad = |problem: String| QuantError::Stored {
            name: name.to_owned(),
            problem,
        };
        let [rows, stored_cols] = shape else {
            return Err(bad(format!("levels have shape {shape:?}, expected 2-D")));
        };
        let (rows, stored_cols) = (*rows, *stored_cols);
        let (want_dtype, cols, group) = match format {
            QuantFormat::Int8 => (Dtype::I8, stored_cols, stored_cols),
            QuantFormat::Int4 => (Dtype::U8, stored_cols * 2, group_size),
        };
        if dtype != want_dtype {
            return Err(bad(format!(
                "levels are {dtype:?}, {} needs {want_dtype:?}",
                format.name()
            )));
        }
        if group == 0 || cols % group != 0 {
            return Err(bad(format!(
                "group_size {group} does not divide its {cols} columns"
            )));
        }
        let want_scales = match format {
            QuantFormat::Int8 => vec![rows],
            QuantFormat::Int4 => vec![rows, cols / group],
        };
        if scale_dtype != Dtype::F32 || scale_shape != want_scales.as_slice() {
            return Err(bad(format!(
                "scales are {scale_dtype:?} {scale_shape:?}, expected F32 {want_scales:?}"
            )));
        }
        if levels.len() != rows * stored_cols {
            return Err(bad("level bytes do not match their shape".into()));
        }
        let scales: Vec<f32> = scales
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(bad(format!(
                "holds the scale {s}; scales are finite and non-negative"
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            group,
            q: levels.to_vec(),
            scales,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i as f32 * 0.731).sin() * 0.05) + if i % 97 == 0 { 0.2 } else { 0.0 })
            .collect()
    }

    #[test]
    fn int8_round_trip_error_is_at_most_half_a_step() {
        let (rows, cols) = (7, 50);
        let w = matrix(rows, cols);
        let q = Quantized::int8(&w, rows, cols);
        let back = q.dequantize();
        for r in 0..rows {
            let s = q.scales[r];
            for c in 0..cols {
                let e = (back[r * cols + c] - w[r * cols + c]).abs();
                assert!(e <= s * 0.5 + 1e-7, "row {r} col {c}: error {e}, step {s}");
            }
            let max = w[r * cols..(r + 1) * cols]
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((s * 127.0 - max).abs() <= 1e-6 * max.max(1.0));
        }
    }

    #[test]
    fn int4_round_trip_error_is_at_most_half_a_step_per_group() {
        let (rows, cols, group) = (5, 64, 32);
        let w = matrix(rows, cols);
        let q = Quantized::int4("w", &w, rows, cols, group).unwrap();
        assert_eq!(q.q.len(), rows * cols / 2);
        assert_eq!(q.scales.len(), rows * 2);
        let back = q.dequantize();
        for r in 0..rows {
            for c in 0..cols {
                let s = q.scale(r, c);
                let e = (back[r * cols + c] - w[r * cols + c]).abs();
                assert!(e <= s * 0.5 + 1e-7, "({r}, {c}): error {e}, step {s}");
                assert!((-7..=7).contains(&q.level(r, c)));
            }
        }
        assert!(matches!(
            Quantized::int4("w", &w, rows, cols, 48),
            Err(QuantError::Group { .. })
        ));
        assert!(matches!(
            Quantized::int4("w", &w, rows, cols, 3),
            Err(QuantError::GroupSize(3))
        ));
    }

    #[test]
    fn a_zero_row_stays_zero() {
        let w = vec![0.0f32; 64];
        assert!(Quantized::int8(&w, 2, 32)
            .dequantize()
            .iter()
            .all(|&v| v == 0.0));
        let q = Quantized::int4("w", &w, 2, 32, 32).unwrap();
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn stored_tensors_read_back_identically() {
        let (rows, cols) = (3, 64);
        let w = matrix(rows, cols);
        for q in [
            Quantized::int8(&w, rows, cols),
            Quantized::int4("w", &w, rows, cols, 16).unwrap(),
        ] {
            let [levels, scales] = q.out_tensors("w");
            let back = Quantized::from_stored(
                "w",
                q.format,
                q.group,
                (levels.dtype, &levels.shape, &levels.data),
                (scales.dtype, &scales.shape, &scales.data),
            )
            .unwrap();
            assert_eq!(back, q);
        }
        let q = Quantized::int8(&w, rows, cols);
        let [levels, scales] = q.out_tensors("w");
        let err = Quantized::from_stored(
            "w",
            QuantFormat::Int4,
            32,
            (levels.dtype, &levels.shape, &levels.data),
            (scales.dtype, &scales.shape, &scales.data),
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs U8"), "{err}");
    }
}
