//! Taking out of an SSE stream the usage chunk the proxy asked for on the client's
//! behalf. The proxy sets `stream_options.include_usage` upstream so streams can be
//! accounted; a client that did not ask for it must not get the final
//! `{"choices": [], "usage": …}` chunk, which api.openai.com would not have sent it (the
//! tutorials' `chunk.choices[0]` loop fails on it). Every other byte passes unchanged,
//! and every frame that holds no part of such a chunk passes as one frame, as received.
//!
//! Only a line that starts `data:` and may still turn out to be the usage chunk is ever
//! held back, and only until its end arrives: half a line is nothing an SSE client can
//! use. Once a partial line shows a non-empty `choices` array it passes at once.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::usage::contains;

/// A data line longer than this is not the usage chunk (which is a few hundred bytes):
/// it passes through instead of being held.
const HOLD_MAX: usize = 64 * 1024;

/// Removes the usage-only chunk (and the blank line that ends its event) from a stream.
#[derive(Debug, Default)]
pub struct UsageChunkFilter {
    /// The start of a line that may be the usage chunk, held until its end.
    held: Vec<u8>,
    /// The current line has already been (partly) passed on: its rest passes too.
    passing: bool,
    /// A usage chunk was just removed: the empty line that ends its event goes too.
    drop_blank: bool,
}

impl UsageChunkFilter {
    /// The part of `frame` to pass on now (possibly empty).
    pub fn filter(&mut self, frame: Bytes) -> Bytes {
        // The common case: nothing held, the frame is whole lines (or a line known not to
        // be the usage chunk) and none is the usage chunk. Checked without a copy.
        let input = if self.held.is_empty() {
            frame
        } else {
            let mut joined = BytesMut::with_capacity(self.held.len() + frame.len());
            joined.extend_from_slice(&self.held);
            joined.extend_from_slice(&frame);
            self.held.clear();
            joined.freeze()
        };
        let mut drops: Vec<std::ops::Range<usize>> = Vec::new();
        let mut at = 0;
        while let Some(nl) = input[at..].iter().position(|&b| b == b'\n').map(|i| at + i) {
            let line = &input[at..nl];
            if std::mem::take(&mut self.passing) {
                // The end of a line whose start already went out.
            } else if std::mem::take(&mut self.drop_blank) && strip_cr(line).is_empty() {
                drops.push(at..nl + 1);
            } else if is_usage_chunk(line) {
                drops.push(at..nl + 1);
                self.drop_blank = true;
            }
            at = nl + 1;
        }
        let mut end = input.len();
        let tail = &input[at..];
        if !tail.is_empty() && !self.passing {
            if self.hold(tail) {
                self.held.extend_from_slice(tail);
                end = at;
            } else {
                self.passing = true;
                self.drop_blank = false;
            }
        }
        if drops.is_empty() {
            return input.slice(..end);
        }
        let mut out = BytesMut::with_capacity(end);
        let mut from = 0;
        for d in drops {
            out.extend_from_slice(&input[from..d.start]);
            from = d.end;
        }
        out.extend_from_slice(&input[from..end]);
        out.freeze()
    }

    /// What is still held when the stream ends: an unfinished last line, passed on
    /// unless it is the usage chunk.
    pub fn finish(&mut self) -> Bytes {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() || is_usage_chunk(&held) || (self.drop_blank && strip_cr(&held).is_empty()) {
            return Bytes::new();
        }
        Bytes::from(held)
    }

    /// Whether the unfinished line `tail` must wait for its end.
    fn hold(&self, tail: &[u8]) -> bool {
        if self.drop_blank && tail == b"\r" {
            return true;
        }
        if tail.len() > HOLD_MAX {
            return false;
        }
        let prefix = &tail[..tail.len().min(5)];
        if prefix != &b"data:"[..prefix.len()] {
            return false;
        }
        !has_choices(tail)
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether a (partial) data line already shows a `choices` array with an element, which
/// the usage-only chunk never has.
fn has_choices(line: &[u8]) -> bool {
    const KEY: &[u8] = b"\"choices\"";
    let Some(at) = line.windows(KEY.len()).position(|w| w == KEY) else {
        return false;
    };
    let mut rest = line[at + KEY.len()..].iter().copied().filter(|b| !b.is_ascii_whitespace());
    matches!((rest.next(), rest.next(), rest.next()), (Some(b':'), Some(b'['), Some(c)) if c != b']')
}

/// The usage-only chunk: `data: {…}` with a non-null `usage` and no choices.
fn is_usage_chunk(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        #[serde(borrow)]
        choices: Option<&'a RawValue>,
        #[serde(borrow)]
        usage: Option<&'a RawValue>,
    }
    let Some(data) = strip_cr(line).strip_prefix(b"data:") else {
        return false;
    };
    if !contains(data, b"\"usage\"") {
        return false;
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk<'_>>(data) else {
        return false;
    };
    let no_choices = chunk
        .choices
        .is_none_or(|c| c.get().bytes().filter(|b| !b.is_ascii_whitespace()).eq(*b"[]") || c.get() == "null");
    no_choices && chunk.usage.is_some_and(|u| u.get() != "null")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(frames: &[&[u8]]) -> Vec<Bytes> {
        let mut f = UsageChunkFilter::default();
        let mut out: Vec<Bytes> = frames.iter().map(|fr| f.filter(Bytes::copy_from_slice(fr))).collect();
        out.push(f.finish());
        out
    }

    fn joined(out: &[Bytes]) -> String {
        out.iter().map(|b| std::str::from_utf8(b).unwrap()).collect()
    }

    #[test]
    fn frames_without_the_usage_chunk_pass_as_they_are() {
        let out = run(&[CONTENT.as_bytes(), CONTENT.as_bytes(), DONE.as_bytes()]);
        assert_eq!(out[..3], [CONTENT, CONTENT, DONE].map(|s| Bytes::from_static(s.as_bytes()))[..]);
        assert!(out[3].is_empty());
    }

    #[test]
    fn the_usage_event_is_removed_and_everything_else_kept() {
        let out = run(&[CONTENT.as_bytes(), USAGE.as_bytes(), DONE.as_bytes()]);
        assert_eq!(out[0], CONTENT);
        assert!(out[1].is_empty());
        assert_eq!(out[2], DONE);
        let crlf = USAGE.replace('\n', "\r\n");
        let out = run(&[format!("{CONTENT}{crlf}{DONE}").as_bytes()]);
        assert_eq!(joined(&out), format!("{CONTENT}{DONE}"));
    }

    #[test]
    fn the_usage_event_is_removed_when_split_at_any_byte() {
        let stream = format!("{CONTENT}{USAGE}{DONE}");
        let bytes = stream.as_bytes();
        for a in 0..bytes.len() {
            for b in [a, (a + 7).min(bytes.len()), (a + 40).min(bytes.len())] {
                let out = run(&[&bytes[..a], &bytes[a..b], &bytes[b..]]);
                assert_eq!(joined(&out), format!("{CONTENT}{DONE}"), "split at {a}/{b}");
            }
        }
    }

    #[test]
    fn a_content_line_split_after_its_choices_passes_at_once() {
        let (head, rest) = CONTENT.split_at(CONTENT.find("\"delta\"").unwrap());
        let mut f = UsageChunkFilter::default();
        assert_eq!(f.filter(Bytes::from_static(head.as_bytes())), head);
        assert_eq!(f.filter(Bytes::from_static(rest.as_bytes())), rest);
        // Split before `choices`, the start waits for the line's end.
        let (head, rest) = CONTENT.split_at(10);
        assert!(f.filter(Bytes::from_static(head.as_bytes())).is_empty());
        assert_eq!(f.filter(Bytes::from_static(rest.as_bytes())), CONTENT);
    }

    #[test]
    fn usage_next_to_choices_and_other_lines_are_kept() {
        let with_choice = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"total_tokens\":4}}\n\n";
        let null_usage = "data: {\"choices\":[],\"usage\":null}\n\n";
        let comment = ": keep-alive {\"choices\":[],\"usage\":{}}\n\n";
        let stream = format!("{with_choice}{null_usage}{comment}event: x\ndata: not json \"usage\"\n\n{DONE}");
        assert_eq!(joined(&run(&[stream.as_bytes()])), stream);
    }

    #[test]
    fn an_unfinished_last_line_is_passed_on_at_the_end() {
        let out = run(&[CONTENT.as_bytes(), b"data: {\"partial"]);
        assert_eq!(joined(&out), format!("{CONTENT}data: {{\"partial"));
    }
}
