//! A parser fuzz test: mutations of every shipped scenario through
//! [`Scenario::parse_bytes`] must never panic, and every rejection must carry
//! a position. Deterministic (a fixed-seed generator), so a failure
//! reproduces; the failing mutant is printed whole.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use layerdrift_backends::{BackendId, DeviceKind};

use super::Scenario;

/// xorshift64*: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Replacements for a number: edges, overflows, non-numbers.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "64",
    "4096",
    "2147483648",
    "4611686018427387904",
    "18446744073709551615",
    "18446744073709551616",
    "1000000000000",
    "1e308",
    "-0.0",
    ".nan",
    ".inf",
    "-.inf",
    "0x10",
    "1_000",
    "\"8\"",
    "[]",
    "{}",
    "~",
    "",
];

/// Characters that mean something to YAML.
const CHARS: &[char] = &[
    ':', '-', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>', '#', '"', '\'', '\t', ' ', '%',
    '@', '`', '?', '\u{feff}', 'é', '\0', 'x', '9',
];

fn mutate(text: &str, rng: &mut Rng) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..=rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(8) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 | 4 => {
                let mut chars: Vec<char> = lines[i].chars().collect();
                let c = CHARS[rng.below(CHARS.len())];
                if chars.is_empty() || rng.below(3) == 0 {
                    let at = rng.below(chars.len() + 1);
                    chars.insert(at, c);
                } else {
                    let at = rng.below(chars.len());
                    chars[at] = c;
                }
                lines[i] = chars.into_iter().collect();
            }
            5 | 6 => {
                // Replace a run of digits with an edge value.
                let l = &lines[i];
                if let Some(start) = l.find(|c: char| c.is_ascii_digit()) {
                    let end = l[start..]
                        .find(|c: char| !c.is_ascii_digit() && c != '.' && c != 'e' && c != '-')
                        .map_or(l.len(), |e| start + e);
                    let n = NUMBERS[rng.below(NUMBERS.len())];
                    lines[i] = format!("{}{n}{}", &l[..start], &l[end..]);
                }
            }
            _ => {
                // Indentation: add or remove up to four spaces.
                let k = rng.below(4) + 1;
                if rng.below(2) == 0 {
                    lines[i] = format!("{}{}", " ".repeat(k), lines[i]);
                } else {
                    let trimmed = lines[i].trim_start_matches(' ');
                    let have = lines[i].len() - trimmed.len();
                    lines[i] = format!("{}{trimmed}", " ".repeat(have.saturating_sub(k)));
                }
            }
        }
    }
    let mut out = lines.join("\n").into_bytes();
    if rng.below(50) == 0 && !out.is_empty() {
        // Now and then a byte that is not UTF-8.
        let at = rng.below(out.len());
        out[at] = 0xff;
    }
    out
}

#[test]
fn mutated_scenarios_never_panic_and_always_say_where() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("scenarios/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no shipped scenarios in {}",
        dir.display()
    );
    let known: Vec<BackendId> = ["candle", "burn-flex", "burn-ndarray", "tch"]
        .into_iter()
        .map(|name| BackendId {
            name,
            device: DeviceKind::Cpu,
        })
        .chain([BackendId::ORACLE])
        .collect();
    let per_file = 10_000usize.div_ceil(files.len());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut accepted, mut rejected) = (0usize, 0usize);
    // Quiet the default hook: a panic is reported below, with its input.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    'all: for f in &files {
        let text = std::fs::read_to_string(f).expect("shipped scenario");
        for _ in 0..per_file {
            let bytes = mutate(&text, &mut rng);
            let result = catch_unwind(AssertUnwindSafe(|| {
                Scenario::parse_bytes(f, &bytes, &known, 4 << 30)
            }));
            match result {
                Err(_) => {
                    failure = Some(format!(
                        "panicked on a mutant of {}:\n{}",
                        f.display(),
                        String::from_utf8_lossy(&bytes)
                    ));
                    break 'all;
                }
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(e)) => {
                    rejected += 1;
                    if let Some(bad) = e.0.iter().find(|e| e.pos.is_none()) {
                        failure = Some(format!(
                            "an error without a position ({bad}) on a mutant of {}:\n{}",
                            f.display(),
                            String::from_utf8_lossy(&bytes)
                        ));
                        break 'all;
                    }
                }
            }
        }
    }
    std::panic::set_hook(hook);
    if let Some(f) = failure {
        panic!("{f}");
    }
    println!("{accepted} mutants accepted, {rejected} rejected with a position");
    assert!(accepted + rejected >= 10_000);
    // The mutations must exercise both paths, or they test nothing.
    assert!(
        accepted > 100 && rejected > 1000,
        "{accepted} accepted, {rejected} rejected"
    );
}
