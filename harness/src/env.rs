//! Every environment variable layerdrift reads, parsed once, in one table.
//!
//! [`VARS`] is the table: `layerdrift env` prints it with this process's
//! values, and docs/environment.md lists the same
//! rows (a unit test keeps the two in step). Front ends call [`check`] at
//! start, so a bad value is one clear error rather than a surprise later.

use std::path::PathBuf;
use std::sync::OnceLock;

use layerdrift_backends::DeviceKind;

/// One environment variable: its name, who reads it, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    /// The variable.
    pub name: &'static str,
    /// What it does.
    pub effect: &'static str,
}

/// Every variable that changes what layerdrift does or measures.
pub const VARS: &[Var] = &[
    Var {
        name: "LAYERDRIFT_ROOT",
        effect: "workspace root holding `scenarios/` and `snapshots/` (default: where the crate was built)",
    },
    Var {
        name: "LAYERDRIFT_SCENARIOS",
        effect: "directory of scenario files (default `<root>/scenarios`)",
    },
    Var {
        name: "LAYERDRIFT_SLOW",
        effect: "`1`: run `slow: true` scenarios in debug builds too (`0` or unset: only in release builds); `manual`: the `slow: manual` full-size ones too",
    },
    Var {
        name: "LAYERDRIFT_RECORD",
        effect: "`1`: snapshot trials compare against (or record into) this machine's class folder even where it lacks the file, so that `INSTA_UPDATE=always` records them",
    },
    Var {
        name: "LAYERDRIFT_BAND",
        effect: "`1`: check snapshots through the tolerance band against the other classes even where this class is recorded (to see how far this machine is from them)",
    },
    Var {
        name: "LAYERDRIFT_DEVICES",
        effect: "comma-separated devices to run (`cpu`, `cuda`, `wgpu`); the oracle always runs. Unset: every device a scenario names",
    },
    Var {
        name: "LAYERDRIFT_MEMORY_LIMIT",
        effect: "most memory one run may need, e.g. `8G`, `512M` (default: the machine's available memory); larger scenarios are refused at validation",
    },
    Var {
        name: "LAYERDRIFT_LIBTORCH_LIB",
        effect: "libtorch's `lib` folder for the `tch` build (written by `scripts/setup-libtorch`)",
    },
    Var {
        name: "LAYERDRIFT_TCH",
        effect: "`0`: `scripts/test` without libtorch (read by the script, not by the binaries)",
    },
    Var {
        name: "INSTA_UPDATE, CI",
        effect: "insta's: `CI=true` writes nothing and fails on a change; `INSTA_UPDATE=always` accepts",
    },
    Var {
        name: "RAYON_NUM_THREADS",
        effect: "threads of candle, burn-flex and burn-ndarray's elementwise ops on CPU (recorded in snapshots)",
    },
    Var {
        name: "MATMUL_NUM_THREADS",
        effect: "threads of burn-ndarray's matmuls (`matrixmultiply`)",
    },
    Var {
        name: "OMP_NUM_THREADS",
        effect: "libtorch's default intra-op threads (a scenario's `threads:` overrides it)",
    },
];

/// The variables, parsed.
#[derive(Clone, Debug)]
pub struct Env {
    /// The workspace root.
    pub root: PathBuf,
    /// The scenario directory.
    pub scenarios: PathBuf,
    /// Run slow scenarios in debug builds.
    pub slow: bool,
    /// Run `slow: manual` (full-size) scenarios too.
    pub manual: bool,
    /// Let snapshot trials record on an unrecorded class.
    pub record: bool,
    /// Band snapshots against other classes even where this one is recorded.
    pub band: bool,
    /// Only these devices, if set.
    pub devices: Option<Vec<DeviceKind>>,
    /// Most bytes one run may need.
    pub memory_limit: u64,
    /// Where `memory_limit` came from, for messages.
    pub memory_limit_from: &'static str,
}

/// Bytes when nothing tells the machine's memory.
const FALLBACK_MEMORY: u64 = 8 << 30;

fn flag(name: &str, problems: &mut Vec<String>) -> bool {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("" | "0") => false,
        Ok("1") => true,
        Ok(other) => {
            problems.push(format!("{name}={other}: use `1` (on) or `0` (off)"));
            false
        }
    }
}

/// `8G`, `512M`, `1048576` → bytes.
///
/// ```
/// use layerdrift::env::parse_bytes;
/// assert_eq!(parse_bytes("2G"), Some(2 << 30));
/// assert_eq!(parse_bytes("512m"), Some(512 << 20));
/// assert_eq!(parse_bytes("12"), Some(12));
/// assert_eq!(parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `MemAvailable` from `/proc/meminfo`, in bytes (Linux).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

fn parse() -> (Env, Vec<String>) {
    let mut problems = Vec::new();
    let root = std::env::var_os("LAYERDRIFT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            built.canonicalize().unwrap_or(built)
        });
    let scenarios = std::env::var_os("LAYERDRIFT_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("scenarios"));
    let (slow, manual) = match std::env::var("LAYERDRIFT_SLOW").as_deref() {
        Ok("manual") => (true, true),
        _ => (flag("LAYERDRIFT_SLOW", &mut problems), false),
    };
    let record = flag("LAYERDRIFT_RECORD", &mut problems);
    let band = flag("LAYERDRIFT_BAND", &mut problems);
    let devices = match std::env::var("LAYERDRIFT_DEVICES") {
        Err(_) => None,
        Ok(v) => {
            let mut list = Vec::new();
            for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                match d.parse::<DeviceKind>() {
                    Ok(d) => list.push(d),
                    Err(e) => {
                        problems.push(format!("LAYERDRIFT_DEVICES={v}: {e}; comma-separated"))
                    }
                }
            }
            (!list.is_empty()).then_some(list)
        }
    };
    let (memory_limit, memory_limit_from) = match std::env::var("LAYERDRIFT_MEMORY_LIMIT") {
        Ok(v) => match parse_bytes(&v) {
            Some(b) if b > 0 => (b, "LAYERDRIFT_MEMORY_LIMIT"),
            _ => {
                problems.push(format!(
                    "LAYERDRIFT_MEMORY_LIMIT={v}: give bytes, optionally with K, M, G or T (e.g. `8G`)"
                ));
                (FALLBACK_MEMORY, "a fallback of 8 GiB")
            }
        },
        Err(_) => match available_memory() {
            Some(b) => (b, "MemAvailable in /proc/meminfo"),
            None => (FALLBACK_MEMORY, "a fallback of 8 GiB"),
        },
    };
    (
        Env {
            root,
            scenarios,
            slow,
            manual,
            record,
            band,
            devices,
            memory_limit,
            memory_limit_from,
        },
        problems,
    )
}

static PARSED: OnceLock<(Env, Vec<String>)> = OnceLock::new();

/// The environment, parsed on first use.
pub fn env() -> &'static Env {
    &PARSED.get_or_init(parse).0
}

/// `Err(problems)` when a variable has a value that cannot be used.
pub fn check() -> Result<(), String> {
    let problems = &PARSED.get_or_init(parse).1;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_variable() {
        let readme = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/environment.md"
        ))
        .expect("docs/environment.md");
        for v in VARS {
            for name in v.name.split(", ") {
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "docs/environment.md's environment table lacks `{name}`"
                );
            }
        }
    }
}
