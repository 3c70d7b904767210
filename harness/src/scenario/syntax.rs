//! The text of a scenario before serde sees it: size, encoding, and one walk
//! over the YAML events that finds what serde_yaml would accept silently or
//! pay for dearly.
//!
//! The walk records where every value starts by key path (`model.dim`,
//! `checks[1].bounds.every_layer.max_abs`, `input.batch[2]`), so a value
//! that parses and is still wrong can be pointed at; and it refuses, with a
//! position, what must not reach serde: duplicate keys (serde keeps one
//! silently), a second document, nesting deeper than [`MAX_DEPTH`], and
//! aliases that expand past [`MAX_NODES`] nodes (an "alias bomb"). The walk
//! never expands an alias and never recurses, so it costs one pass over the
//! text whatever the file holds.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::error::Pos;

/// Largest scenario file read, in bytes (scenarios are a few KB).
pub const MAX_BYTES: usize = 1 << 20;
/// Most YAML nodes a scenario may expand to, aliases counted at their size.
pub const MAX_NODES: usize = 100_000;
/// Deepest nesting of mappings and lists.
pub const MAX_DEPTH: usize = 32;

/// A problem found in the text, with its position.
pub type TextError = (Option<Pos>, String);

/// Checks size and encoding and drops a leading byte-order mark.
pub fn decode(bytes: &[u8]) -> Result<&str, TextError> {
    if bytes.len() > MAX_BYTES {
        return Err((
            None,
            format!(
                "the file is {} bytes; a scenario may be at most {MAX_BYTES} (is this the right file?)",
                bytes.len()
            ),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let ok = e.valid_up_to();
        // The text before the bad byte is valid UTF-8 by definition.
        let before = std::str::from_utf8(&bytes[..ok]).unwrap_or("");
        (
            Some(Pos::of_offset(before, ok)),
            format!(
                "not UTF-8: byte 0x{:02x} at offset {ok} — save the file as UTF-8",
                bytes[ok]
            ),
        )
    })
}

/// Positions of every value in a YAML document, by key path.
#[derive(Debug, Default)]
pub struct PathIndex {
    values: HashMap<String, Pos>,
}

impl PathIndex {
    /// Where the value at `path` starts, or failing that its nearest parent.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Whether the file gave a value at exactly `path`.
    pub fn has(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }
}

enum Frame {
    Map {
        path: String,
        /// The pending key, and where it is.
        key: Option<(String, Pos)>,
        /// Keys seen, with their position.
        seen: HashMap<String, Pos>,
        anchor: usize,
        nodes: usize,
    },
    Seq {
        path: String,
        next: usize,
        anchor: usize,
        nodes: usize,
    },
}

impl Frame {
    fn nodes(&mut self) -> &mut usize {
        match self {
            Frame::Map { nodes, .. } | Frame::Seq { nodes, .. } => nodes,
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: m.line(),
        col: m.col() + 1,
    }
}

/// Walks `text` (already decoded), indexing value positions and refusing
/// duplicate keys, extra documents, deep nesting and alias bombs.
pub fn scan(text: &str) -> Result<PathIndex, Vec<TextError>> {
    // Indentation with a space that is not ASCII (a no-break space pasted
    // from a web page, an ideographic space): YAML sees text, not indent,
    // and the parser's error lands on a later line. Said where it is.
    let odd: Vec<TextError> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (col, c) = line
                .chars()
                .take_while(|c| c.is_whitespace())
                .enumerate()
                .find(|(_, c)| !c.is_ascii())?;
            Some((
                Some(Pos {
                    line: i + 1,
                    col: col + 1,
                }),
                format!(
                    "indentation with U+{:04X} ({}): YAML indents with ASCII spaces only; replace it with a space",
                    c as u32,
                    match c {
                        '\u{a0}' => "a no-break space",
                        '\u{3000}' => "an ideographic space",
                        '\u{2000}'..='\u{200a}' => "a typographic space",
                        _ => "a non-ASCII space",
                    }
                ),
            ))
        })
        .collect();
    if !odd.is_empty() {
        return Err(odd);
    }
    // A tab between a key and its value is legal YAML that yaml-rust2
    // rejects; as a space it keeps every column, and only this index sees it.
    let spaced;
    let text = if text.contains('\t') {
        spaced = text.replace('\t', " ");
        spaced.as_str()
    } else {
        text
    };
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut values = HashMap::new();
    let mut errors = Vec::new();
    let mut anchors: HashMap<usize, usize> = HashMap::new();
    let mut documents = 0usize;
    let mut total = 0usize;
    loop {
        let (ev, mark) = match parser.next_token() {
            Ok(x) => x,
            Err(e) => {
                errors.push((Some(pos(e.marker())), format!("YAML syntax: {}", e.info())));
                return Err(errors);
            }
        };
        let at = pos(&mark);
        // The node count this event adds (an alias adds its anchor's size).
        let mut weight = 0usize;
        let leaf = matches!(ev, Event::Scalar(..) | Event::Alias(_));
        let mut anchor_done: Option<(usize, usize)> = None;
        match ev {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    errors.push((
                        Some(at),
                        "a second YAML document starts here: a scenario file holds one document (remove the `---` and what follows, or move it to its own file)".into(),
                    ));
                    return Err(errors);
                }
            }
            Event::Scalar(value, _, anchor, _) => {
                weight = 1;
                if anchor > 0 {
                    anchor_done = Some((anchor, 1));
                }
                let mut is_key = false;
                if let Some(Frame::Map { key, seen, .. }) = stack.last_mut()
                    && key.is_none()
                {
                    is_key = true;
                    if let Some(first) = seen.get(&value) {
                        errors.push((
                            Some(at),
                            format!(
                                "duplicate key `{value}` (first at line {}): YAML keeps only one of them — remove or rename one",
                                first.line
                            ),
                        ));
                    } else {
                        seen.insert(value.clone(), at);
                    }
                    *key = Some((value, at));
                }
                if !is_key && let Some(p) = value_path(&mut stack) {
                    values.entry(p).or_insert(at);
                }
            }
            Event::Alias(id) => {
                weight = anchors.get(&id).copied().unwrap_or(1);
                if let Some(Frame::Map { key, .. }) = stack.last_mut()
                    && key.is_none()
                {
                    // An alias as a key: rare, never a scenario key.
                    *key = Some(("*alias".into(), at));
                } else if let Some(p) = value_path(&mut stack) {
                    values.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                weight = 1;
                if stack.len() >= MAX_DEPTH {
                    errors.push((
                        Some(at),
                        format!(
                            "nested deeper than {MAX_DEPTH} levels: a scenario never needs that"
                        ),
                    ));
                    return Err(errors);
                }
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = if stack.is_empty() {
                    (String::new(), None)
                } else {
                    if let Some(Frame::Map { key, .. }) = stack.last_mut()
                        && key.is_none()
                    {
                        errors.push((
                            Some(at),
                            "a mapping or list used as a key: keys are plain names".into(),
                        ));
                        return Err(errors);
                    }
                    keyed_path(&mut stack).unwrap_or_default()
                };
                // A nested mapping or list is located at its key (`model:`),
                // a list item at its first character.
                let (path, key_at) = path;
                if !path.is_empty() {
                    values.entry(path.clone()).or_insert(key_at.unwrap_or(at));
                }
                stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        seen: HashMap::new(),
                        anchor,
                        nodes: 0,
                    }
                } else {
                    Frame::Seq {
                        path,
                        next: 0,
                        anchor,
                        nodes: 0,
                    }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(mut f) = stack.pop() {
                    let n = *f.nodes() + 1;
                    let anchor = match f {
                        Frame::Map { anchor, .. } | Frame::Seq { anchor, .. } => anchor,
                    };
                    if anchor > 0 {
                        anchor_done = Some((anchor, n));
                    }
                    if let Some(parent) = stack.last_mut() {
                        *parent.nodes() = parent.nodes().saturating_add(n);
                    }
                }
            }
            _ => {}
        }
        if let Some((id, n)) = anchor_done {
            anchors.insert(id, n);
        }
        if weight > 0 {
            total = total.saturating_add(weight);
            if total > MAX_NODES {
                errors.push((
                    Some(at),
                    format!(
                        "the document expands to more than {MAX_NODES} YAML nodes (aliases count at the size of what they repeat): a scenario never needs that"
                    ),
                ));
                return Err(errors);
            }
            // A leaf adds to its container now; a container adds itself to
            // its parent when it closes.
            if leaf && let Some(f) = stack.last_mut() {
                *f.nodes() = f.nodes().saturating_add(weight);
            }
        }
    }
    if errors.is_empty() {
        Ok(PathIndex { values })
    } else {
        Err(errors)
    }
}

/// The path of the value that starts now, and where its key is (in a
/// mapping); advances a list's index.
fn keyed_path(stack: &mut [Frame]) -> Option<(String, Option<Pos>)> {
    match stack.last_mut()? {
        Frame::Map { path, key, .. } => key.take().map(|(k, at)| (join(path, &k), Some(at))),
        Frame::Seq { path, next, .. } => {
            *next += 1;
            Some((format!("{path}[{}]", *next - 1), None))
        }
    }
}

/// The path of the value that starts now.
fn value_path(stack: &mut [Frame]) -> Option<String> {
    keyed_path(stack).map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_by_key_path() {
        let text = "model:\n  kind: residual_mlp\n  dim: 0\ninput:\n  batch: [1, 8, 16]\nchecks:\n  - strategies: [full, rows]\n    bounds:\n      every_layer: { max_abs: -1 }\n";
        let ix = scan(text).unwrap();
        assert_eq!(ix.find("model.dim"), Some(Pos { line: 3, col: 8 }));
        assert_eq!(ix.find("input.batch[2]"), Some(Pos { line: 5, col: 17 }));
        assert_eq!(
            ix.find("checks[0].bounds.every_layer.max_abs"),
            Some(Pos { line: 9, col: 31 })
        );
        // An unknown child falls back to its parent.
        assert_eq!(ix.find("model.nope"), Some(Pos { line: 1, col: 1 }));
    }

    #[test]
    fn tabs_keep_positions() {
        let ix = scan("a:\t1\nb:\t2\n").unwrap();
        assert_eq!(ix.find("b"), Some(Pos { line: 2, col: 4 }));
    }

    #[test]
    fn refuses_duplicates_documents_depth_and_bombs() {
        let dup = scan("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(dup[0].0, Some(Pos { line: 3, col: 1 }));
        assert!(dup[0].1.contains("duplicate key `a` (first at line 1)"));
        let docs = scan("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(docs[0].0.map(|p| p.line), Some(2));
        let deep = format!("a: {}{}\n", "[".repeat(40), "]".repeat(40));
        assert!(scan(&deep).unwrap_err()[0].1.contains("nested deeper"));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            bomb += &format!(
                "a{i}: &a{i} [{}]\n",
                vec![format!("*a{}", i - 1); 10].join(", ")
            );
        }
        let e = scan(&bomb).unwrap_err();
        assert!(e[0].1.contains("expands to more than"), "{e:?}");
        // Anchors that stay small are fine (the shipped scenarios use them).
        assert!(scan("a: &b { x: 1 }\nc: *b\nd: *b\n").is_ok());
    }

    #[test]
    fn decodes_bom_and_reports_bad_bytes_where_they_are() {
        assert_eq!(decode(b"\xEF\xBB\xBFa: 1").unwrap(), "a: 1");
        let (pos, msg) = decode(b"a: 1\nb: caf\xff\n").unwrap_err();
        assert_eq!(pos, Some(Pos { line: 2, col: 7 }));
        assert!(msg.contains("0xff"));
    }
}
