//! The metric vocabulary: one row per metric, read by bounds, tables, plots,
//! snapshots and the CLI. A new metric is a new row here (and a field of
//! [`LayerDrift`]), not edits in five files.

use std::fmt;
use std::str::FromStr;

use crate::metrics::LayerDrift;

/// A per-layer drift metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Mean |a − b| — the seed's figure.
    MeanAbs,
    /// Max |a − b|.
    MaxAbs,
    /// sqrt(mean (a − b)²).
    Rms,
    /// Max relative error.
    MaxRel,
    /// Max distance in units in the last place of the run's dtype.
    MaxUlps,
    /// Share of bitwise-equal elements.
    Equal,
}

impl Metric {
    /// Every metric, in table and snapshot column order.
    pub const ALL: [Metric; 6] = [
        Metric::MeanAbs,
        Metric::MaxAbs,
        Metric::Rms,
        Metric::MaxRel,
        Metric::MaxUlps,
        Metric::Equal,
    ];

    /// The name in tables, plots and `--metric`.
    pub const fn name(self) -> &'static str {
        match self {
            Metric::MeanAbs => "mean_abs",
            Metric::MaxAbs => "max_abs",
            Metric::Rms => "rms",
            Metric::MaxRel => "max_rel",
            Metric::MaxUlps => "max_ulps",
            Metric::Equal => "equal",
        }
    }

    /// The key of its limit in a scenario's `every_layer:` / `last_layer:`.
    pub const fn bound_key(self) -> &'static str {
        match self {
            Metric::Equal => "min_equal_share",
            Metric::MeanAbs | Metric::MaxAbs | Metric::Rms | Metric::MaxRel | Metric::MaxUlps => {
                self.name()
            }
        }
    }

    /// What it measures, for plot axes and help texts.
    pub const fn describe(self) -> &'static str {
        match self {
            Metric::MeanAbs => "mean |Δ|",
            Metric::MaxAbs => "max |Δ|",
            Metric::Rms => "RMS of Δ",
            Metric::MaxRel => "max relative error",
            Metric::MaxUlps => "max ULP distance",
            Metric::Equal => "bitwise-equal share",
        }
    }

    /// Its column in a snapshot's layer lines (the `columns:` header).
    pub const fn column(self) -> &'static str {
        match self {
            Metric::MeanAbs => "mean|Δ|",
            Metric::MaxAbs => "max|Δ|",
            Metric::Rms => "rms|Δ|",
            Metric::MaxRel => "max_rel",
            Metric::MaxUlps => "max_ulps",
            Metric::Equal => "equal%",
        }
    }

    /// The metric of snapshot column `s`, if it is one.
    pub fn from_column(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.column() == s)
    }

    /// Its position in [`Metric::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A value as [`Metric::format_value`] wrote it (`0.5%` → 0.005).
    pub fn parse_value(self, s: &str) -> Option<f64> {
        match self {
            Metric::Equal => s.strip_suffix('%')?.parse::<f64>().ok().map(|p| p / 100.0),
            Metric::MeanAbs | Metric::MaxAbs | Metric::Rms | Metric::MaxRel | Metric::MaxUlps => {
                s.parse().ok()
            }
        }
    }

    /// Whether its bound is a floor (a share that must stay high) rather
    /// than a ceiling.
    pub const fn is_floor(self) -> bool {
        matches!(self, Metric::Equal)
    }

    /// Its value at one layer (NaN-free: non-finite elements are counted
    /// apart, in [`LayerDrift::non_finite`]).
    pub fn value(self, d: &LayerDrift) -> f64 {
        match self {
            Metric::MeanAbs => d.mean_abs,
            Metric::MaxAbs => d.max_abs,
            Metric::Rms => d.rms,
            Metric::MaxRel => d.max_rel,
            Metric::MaxUlps => d.max_ulps as f64,
            Metric::Equal => d.equal_share,
        }
    }

    /// A value of this metric as text: three significant digits, whole ULPs,
    /// a percentage for the equal share.
    pub fn format_value(self, v: f64) -> String {
        match self {
            Metric::MaxUlps => format!("{v:.0}"),
            Metric::Equal => format!("{:.1}%", 100.0 * v),
            Metric::MeanAbs | Metric::MaxAbs | Metric::Rms | Metric::MaxRel => sig3(v),
        }
    }

    /// Its value at one layer as text; `NaN/Inf×n` where non-finite values
    /// were found, whatever the metric.
    pub fn format(self, d: &LayerDrift) -> String {
        if d.non_finite > 0 {
            return format!("NaN/Inf×{}", d.non_finite);
        }
        self.format_value(self.value(d))
    }

    /// `mean_abs, max_abs, …`, for messages.
    pub fn known() -> String {
        Metric::ALL.map(Metric::name).join(", ")
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    /// ```
    /// use layerdrift::metric::Metric;
    /// assert_eq!("max_ulps".parse::<Metric>(), Ok(Metric::MaxUlps));
    /// assert!("mean".parse::<Metric>().unwrap_err().contains("mean_abs"));
    /// ```
    fn from_str(s: &str) -> Result<Metric, String> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown metric `{s}` (known: {})", Metric::known()))
    }
}

/// A number with three significant digits (`4.21e-7`), `0` for zero — the
/// precision snapshots keep, so a diff means the numbers really moved.
///
/// ```
/// assert_eq!(layerdrift::metric::sig3(0.0), "0");
/// assert_eq!(layerdrift::metric::sig3(4.2149e-7), "4.21e-7");
/// assert_eq!(layerdrift::metric::sig3(f64::NAN), "NaN");
/// ```
pub fn sig3(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_nan() {
        "NaN".into()
    } else {
        format!("{x:.2e}")
    }
}
