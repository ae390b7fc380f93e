//! Splits a QMP byte stream into JSON texts the way QEMU's JSON streamer does: by
//! bracket depth outside strings, so a syntax error costs one reply and the stream
//! carries on with the next value instead of dropping the client.

/// What [`Framer::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One complete top-level JSON text (not yet validated).
    Text(Vec<u8>),
    /// The current text grew past the limit; the connection should be closed.
    TooLong,
}

/// Incremental splitter; feed it bytes as they arrive.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    depth: usize,
    /// The quote that opened the string being read (QEMU accepts `'` and `"`).
    in_string: Option<u8>,
    escape: bool,
    max: usize,
}

impl Framer {
    /// A framer that refuses texts longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Framer {
            buf: Vec::new(),
            depth: 0,
            in_string: None,
            escape: false,
            max,
        }
    }

    /// Consumes `bytes`, appending every finished text (in order) to `out`.
    /// After [`Frame::TooLong`] the framer holds no state and emits nothing more
    /// for the bytes of that call.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        for &b in bytes {
            if let Some(quote) = self.in_string {
                self.buf.push(b);
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == quote {
                    self.in_string = None;
                    if self.depth == 0 {
                        self.emit(out);
                    }
                }
            } else {
                match b {
                    b'"' | b'\'' => {
                        self.buf.push(b);
                        self.in_string = Some(b);
                    }
                    b'{' | b'[' => {
                        self.buf.push(b);
                        self.depth += 1;
                    }
                    b'}' | b']' => {
                        self.buf.push(b);
                        // A stray closer at depth zero is its own (invalid) text.
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            self.emit(out);
                        }
                    }
                    b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {
                        // Ends a top-level scalar such as `123` or `true`.
                        if !self.buf.is_empty() {
                            self.emit(out);
                        }
                    }
                    _ => self.buf.push(b),
                }
            }
            if self.buf.len() > self.max {
                *self = Framer::new(self.max);
                out.push(Frame::TooLong);
                return;
            }
        }
    }

    fn emit(&mut self, out: &mut Vec<Frame>) {
        out.push(Frame::Text(std::mem::take(&mut self.buf)));
        self.depth = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&str]) -> Vec<String> {
        let mut f = Framer::new(64);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c.as_bytes(), &mut out);
        }
        out.into_iter()
            .map(|fr| match fr {
                Frame::Text(t) => String::from_utf8(t).unwrap(),
                Frame::TooLong => "<too long>".into(),
            })
            .collect()
    }

    #[test]
    fn objects_split_across_reads_and_packed_in_one_read() {
        assert_eq!(
            split(&["{\"a\": {\"b\"", ": [1]}}{\"c\":\"}{\"}", "\n"]),
            ["{\"a\": {\"b\": [1]}}", "{\"c\":\"}{\"}"]
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        assert_eq!(split(&["{\"a\":\"x\\\"}\"}"]), ["{\"a\":\"x\\\"}\"}"]);
    }

    #[test]
    fn single_quoted_strings_hide_brackets_and_double_quotes() {
        assert_eq!(
            split(&["{'a':'}\"{'}{'b':'x\\'}'}"]),
            ["{'a':'}\"{'}", "{'b':'x\\'}'}"]
        );
    }

    #[test]
    fn scalars_and_stray_closers_are_texts_of_their_own() {
        assert_eq!(split(&["123 \"s\" ] {}"]), ["123", "\"s\"", "]", "{}"]);
    }

    #[test]
    fn overlong_text_is_reported_once() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        assert_eq!(split(&[&long]), ["<too long>"]);
    }
}
