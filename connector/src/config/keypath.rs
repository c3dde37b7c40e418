//! [`key_path_at`] names the key at a byte offset of a TOML document
//! (`plc[0].group[1].nodes[2]`): serde errors carry a span but no path.

/// The key path (`plc[0].group[1].nodes[2]`, `sink.parquet.bogus`) of the key or value at byte
/// `offset` of a TOML document, for errors that only carry a span.
///
/// A lenient scanner, not a parser: it understands table headers (counting `[[array]]`
/// elements), dotted and quoted keys, inline tables, arrays, strings and comments, and gives up
/// (`None`) on anything it does not recognise.
pub fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let mut s = Scanner {
        src: text.as_bytes(),
        pos: 0,
        target: offset,
        aot: Vec::new(),
    };
    match s.document() {
        Scan::Found(path) if !path.is_empty() => Some(path),
        _ => None,
    }
}

enum Scan {
    /// Scanned past this item without reaching the target.
    Continue,
    Found(String),
    GiveUp,
}

macro_rules! scan {
    ($e:expr) => {
        match $e {
            Scan::Continue => {}
            other => return other,
        }
    };
}

struct Scanner<'a> {
    src: &'a [u8],
    pos: usize,
    target: usize,
    /// Array-of-tables seen so far (indexed path such as `plc[0].group`) and their lengths.
    aot: Vec<(String, usize)>,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_owned()
    } else {
        format!("{base}.{key}")
    }
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn at(&self, s: &str) -> bool {
        self.src[self.pos.min(self.src.len())..].starts_with(s.as_bytes())
    }

    fn hit(&self, start: usize, end: usize) -> bool {
        (start..end.max(start + 1)).contains(&self.target)
    }

    /// Spaces, tabs and comments; newlines too when `newlines`.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b'\n' if newlines => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn document(&mut self) -> Scan {
        let mut table = String::new();
        loop {
            self.skip_blank(true);
            match self.peek() {
                None => return Scan::Continue,
                Some(b'[') => match self.header() {
                    Ok(path) => table = path,
                    Err(scan) => return scan,
                },
                Some(_) => scan!(self.keyval(&table)),
            }
        }
    }

    /// `[a.b]` or `[[a.b]]`: the indexed path of the table it opens.
    fn header(&mut self) -> Result<String, Scan> {
        let array = self.at("[[");
        self.pos += if array { 2 } else { 1 };
        let mut path = String::new();
        loop {
            self.skip_blank(false);
            let start = self.pos;
            let Some(name) = self.key_segment() else {
                return Err(Scan::GiveUp);
            };
            let end = self.pos;
            path = join(&path, &name);
            self.skip_blank(false);
            let last = self.peek() == Some(b']');
            if last && array {
                let n = match self.aot.iter_mut().find(|(p, _)| *p == path) {
                    Some((_, n)) => {
                        *n += 1;
                        *n - 1
                    }
                    None => {
                        self.aot.push((path.clone(), 1));
                        0
                    }
                };
                // A new element: forget the arrays nested in the previous one.
                let prefix = format!("{path}[");
                self.aot.retain(|(p, _)| !p.starts_with(&prefix));
                path = format!("{path}[{n}]");
            } else if let Some((_, n)) = self.aot.iter().find(|(p, _)| *p == path) {
                path = format!("{path}[{}]", n.saturating_sub(1));
            }
            if self.hit(start, end) {
                return Err(Scan::Found(path));
            }
            match self.peek() {
                Some(b'.') => self.pos += 1,
                Some(b']') => {
                    self.pos += if array { 2 } else { 1 };
                    return Ok(path);
                }
                _ => return Err(Scan::GiveUp),
            }
        }
    }

    /// One bare or quoted key segment.
    fn key_segment(&mut self) -> Option<String> {
        match self.peek()? {
            b'"' | b'\'' => {
                let (start, end) = self.string()?;
                let raw = std::str::from_utf8(&self.src[start..end]).ok()?;
                Some(raw.trim_matches(|c| c == '"' || c == '\'').to_owned())
            }
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
                {
                    self.pos += 1;
                }
                (self.pos > start)
                    .then(|| String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
            }
        }
    }

    /// `a.b = value` under `base`.
    fn keyval(&mut self, base: &str) -> Scan {
        let mut path = base.to_owned();
        loop {
            self.skip_blank(false);
            let start = self.pos;
            let Some(name) = self.key_segment() else {
                return Scan::GiveUp;
            };
            path = join(&path, &name);
            if self.hit(start, self.pos) {
                return Scan::Found(path);
            }
            self.skip_blank(false);
            match self.peek() {
                Some(b'.') => self.pos += 1,
                Some(b'=') => {
                    self.pos += 1;
                    self.skip_blank(false);
                    return self.value(&path);
                }
                _ => return Scan::GiveUp,
            }
        }
    }

    fn value(&mut self, path: &str) -> Scan {
        let start = self.pos;
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        Some(b'}') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => self.pos += 1,
                        None => return Scan::GiveUp,
                        Some(_) => scan!(self.keyval(path)),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut index = 0;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b',') => {
                            self.pos += 1;
                            index += 1;
                        }
                        None => return Scan::GiveUp,
                        Some(_) => scan!(self.value(&format!("{path}[{index}]"))),
                    }
                }
            }
            Some(b'"' | b'\'') => {
                if self.string().is_none() {
                    return Scan::GiveUp;
                }
            }
            Some(_) => {
                while !matches!(self.peek(), None | Some(b',' | b']' | b'}' | b'\n' | b'#')) {
                    self.pos += 1;
                }
            }
            None => return Scan::GiveUp,
        }
        if self.hit(start, self.pos) {
            Scan::Found(path.to_owned())
        } else {
            Scan::Continue
        }
    }

    /// A basic, literal or multi-line string starting at `pos`; its span with the quotes.
    fn string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        let quote = self.peek()?;
        let triple = if quote == b'"' { "\"\"\"" } else { "'''" };
        if self.at(triple) {
            self.pos += 3;
            while !self.at(triple) {
                if quote == b'"' && self.peek() == Some(b'\\') {
                    self.pos += 1;
                }
                self.peek()?;
                self.pos += 1;
            }
            self.pos += 3;
            // Up to two more quotes may close the content.
            while self.peek() == Some(quote) {
                self.pos += 1;
            }
        } else {
            self.pos += 1;
            loop {
                match self.peek()? {
                    b'\\' if quote == b'"' => self.pos += 2,
                    b'\n' => return None,
                    c if c == quote => {
                        self.pos += 1;
                        break;
                    }
                    _ => self.pos += 1,
                }
            }
        }
        Some((start, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(text: &str, needle: &str) -> Option<String> {
        key_path_at(text, text.find(needle).unwrap())
    }

    #[test]
    fn key_path_counts_array_of_tables_per_parent() {
        let text = "[line]\nid = \"a\"\n\n[[plc]]\nid = \"x\"\n[[plc.group]]\nname = \"g0\"\n\
                    [[plc.group]]\nname = \"g1\"\n\n[[plc]]\nid = \"y\"\n[[plc.group]]\nbogus = 1\n";
        assert_eq!(path_of(text, "id = \"a\"").as_deref(), Some("line.id"));
        assert_eq!(
            path_of(text, "\"g1\"").as_deref(),
            Some("plc[0].group[1].name")
        );
        assert_eq!(
            path_of(text, "bogus").as_deref(),
            Some("plc[1].group[0].bogus")
        );
        assert_eq!(path_of(text, "\"y\"").as_deref(), Some("plc[1].id"));
    }

    #[test]
    fn key_path_enters_inline_tables_and_arrays() {
        let text = "[[plc]]\nauth = { username = \"u\", bogus = 1 }\n[[plc.group]]\n\
                    nodes = [\n  \"i=85\", # comment, with [brackets]\n  { id = \"i=1\", nam = \"x\" },\n]\n";
        assert_eq!(path_of(text, "bogus").as_deref(), Some("plc[0].auth.bogus"));
        assert_eq!(
            path_of(text, "nam ").as_deref(),
            Some("plc[0].group[0].nodes[1].nam")
        );
        assert_eq!(
            path_of(text, "\"i=85\"").as_deref(),
            Some("plc[0].group[0].nodes[0]")
        );
    }

    #[test]
    fn key_path_of_header_segment_and_dotted_keys() {
        let text = "[line]\nid = 'a'\n[sink.mqtt]\nurl = \"\"\"x\n]\"\"\"\n[metrics]\ndeadband.absolute = 1\n";
        assert_eq!(path_of(text, "mqtt").as_deref(), Some("sink.mqtt"));
        assert_eq!(
            path_of(text, "absolute").as_deref(),
            Some("metrics.deadband.absolute")
        );
    }
}
