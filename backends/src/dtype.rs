//! Floating-point element types a run can use.

use std::fmt;

/// The element type the backend computes in. Host arrays are always f32 (or
/// f64 for the oracle) and are cast on upload, so every backend starts from
/// the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32 — the default and the seed's dtype.
    F32,
    /// IEEE binary64.
    F64,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Every dtype, in the order scenarios list them.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The scenario spelling (`f32`, `f64`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Parses the scenario spelling.
    pub fn parse(s: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Distance in units in the last place between two values of this dtype
    /// (given as f64, which holds every value of the narrower types exactly).
    /// Values of opposite sign count through zero; `None` when either is NaN.
    ///
    /// ```
    /// use layerdrift_backends::DType;
    /// let one = 1.0f32;
    /// let next = f32::from_bits(one.to_bits() + 1);
    /// assert_eq!(DType::F32.ulps(one as f64, next as f64), Some(1));
    /// assert_eq!(DType::F32.ulps(0.0, -0.0), Some(0));
    /// assert_eq!(DType::F32.ulps(f64::NAN, 1.0), None);
    /// ```
    pub fn ulps(self, a: f64, b: f64) -> Option<u64> {
        if a.is_nan() || b.is_nan() {
            return None;
        }
        // Map the sign-magnitude bit pattern onto a monotonic integer line.
        fn line(bits: u64, sign: u64) -> i128 {
            if bits & sign != 0 {
                -((bits & !sign) as i128)
            } else {
                bits as i128
            }
        }
        let (ia, ib) = match self {
            DType::F64 => {
                let s = 1u64 << 63;
                (line(a.to_bits(), s), line(b.to_bits(), s))
            }
            DType::F32 => {
                let s = 1u64 << 31;
                (
                    line((a as f32).to_bits() as u64, s),
                    line((b as f32).to_bits() as u64, s),
                )
            }
            DType::F16 => {
                let s = 1u64 << 15;
                (
                    line(half::f16::from_f64(a).to_bits() as u64, s),
                    line(half::f16::from_f64(b).to_bits() as u64, s),
                )
            }
            DType::BF16 => {
                let s = 1u64 << 15;
                (
                    line(half::bf16::from_f64(a).to_bits() as u64, s),
                    line(half::bf16::from_f64(b).to_bits() as u64, s),
                )
            }
        };
        Some((ia - ib).unsigned_abs() as u64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
