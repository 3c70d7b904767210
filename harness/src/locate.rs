//! Source positions of YAML keys, for `path:line:column` errors.
//!
//! serde_yaml reports positions for syntax and type errors, but a value that
//! parses and is still wrong (`dim: 0`) needs its position found again. This
//! walks the parser's marked events once and records, for every key path
//! (`model.dim`, `checks[1].bounds.every_layer.max_abs`, `input.batch[2]`),
//! where its value starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a YAML file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// Positions of every value in a YAML document, by key path.
#[derive(Debug, Default)]
pub struct PathIndex {
    map: HashMap<String, Pos>,
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Pos)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

struct Walker {
    stack: Vec<Frame>,
    map: HashMap<String, Pos>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Walker {
    /// The path of the value that starts now and, in a mapping, where its
    /// key is; advances the parent.
    fn value_path(&mut self) -> Option<(String, Option<Pos>)> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => key.take().map(|(k, at)| (join(path, &k), Some(at))),
            Frame::Seq { path, next } => {
                *next += 1;
                Some((format!("{path}[{}]", *next - 1), None))
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut()
                    && key.is_none()
                {
                    *key = Some((value, pos));
                    return;
                }
                if let Some((p, _)) = self.value_path() {
                    self.map.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A nested mapping or list is located at its key (`model:`),
                // a list item at its first character.
                let (path, key_at) = if self.stack.is_empty() {
                    (String::new(), None)
                } else {
                    self.value_path().unwrap_or_default()
                };
                if !path.is_empty() {
                    self.map
                        .entry(path.clone())
                        .or_insert(key_at.unwrap_or(pos));
                }
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                let _ = self.value_path();
            }
            _ => {}
        }
    }
}

impl PathIndex {
    /// Indexes `text`; a document that does not parse gives an empty index
    /// (serde_yaml reports the syntax error with its own position).
    pub fn new(text: &str) -> PathIndex {
        let mut w = Walker {
            stack: Vec::new(),
            map: HashMap::new(),
        };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut w, false).is_err() {
            return PathIndex::default();
        }
        PathIndex { map: w.map }
    }

    /// Where the value at `path` starts, or failing that its nearest parent.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.map.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_list_items() {
        let text = "model:\n  kind: residual_mlp\n  dim: 0\ninput:\n  batch: [1, 8, 16]\nchecks:\n  - strategies: [full, rows]\n    bounds:\n      every_layer: { max_abs: -1 }\n";
        let ix = PathIndex::new(text);
        assert_eq!(ix.find("model.dim"), Some(Pos { line: 3, col: 8 }));
        assert_eq!(ix.find("input.batch[2]"), Some(Pos { line: 5, col: 17 }));
        assert_eq!(
            ix.find("checks[0].bounds.every_layer.max_abs"),
            Some(Pos { line: 9, col: 31 })
        );
        // Unknown child falls back to the parent, located at its key.
        assert_eq!(ix.find("model.nope"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(ix.find("input.batch"), Some(Pos { line: 5, col: 3 }));
    }
}
