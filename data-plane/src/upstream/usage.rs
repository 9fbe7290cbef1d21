//! Reading token usage out of a response as it streams past, without holding the body:
//! SSE streams are scanned line by line for the chunk that carries `usage` (the final
//! one, asked for with `stream_options.include_usage`); JSON bodies are kept whole when
//! small, otherwise only their tail, where OpenAI-shaped bodies put `usage`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

const JSON_KEEP: usize = 256 * 1024;
const JSON_TAIL: usize = 16 * 1024;
const SSE_LINE_MAX: usize = 1024 * 1024;

/// Tokens of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Total tokens.
    pub total: u64,
    /// Prompt tokens read from a cache.
    pub cached: u64,
}

impl Usage {
    fn from_fields(f: UsageFields) -> Self {
        let (prompt, completion) = (f.prompt_tokens.0, f.completion_tokens.0);
        let total = match f.total_tokens.0 {
            0 => prompt + completion,
            t => t,
        };
        Self { prompt, completion, total, cached: f.prompt_tokens_details.0 }
    }
}

/// The `usage` object as providers send it. Read leniently: a count that is missing,
/// null or not a whole number is 0, and unknown fields are skipped, so one odd field
/// never loses the rest of the accounting.
#[derive(Deserialize)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Count,
    #[serde(default)]
    completion_tokens: Count,
    #[serde(default)]
    total_tokens: Count,
    /// `prompt_tokens_details.cached_tokens`.
    #[serde(default)]
    prompt_tokens_details: CachedTokens,
}

/// A token count: any JSON value, read as a whole number or 0.
#[derive(Default)]
struct Count(u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Count(Value::deserialize(d)?.as_u64().unwrap_or(0)))
    }
}

/// `cached_tokens` out of `prompt_tokens_details`, or 0 whatever else is there.
#[derive(Default)]
struct CachedTokens(u64);

impl<'de> Deserialize<'de> for CachedTokens {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(CachedTokens(v.get("cached_tokens").and_then(Value::as_u64).unwrap_or(0)))
    }
}

/// The one field of an answer (or a stream chunk) that matters here; the rest is
/// skipped unparsed.
#[derive(Deserialize)]
struct Answer {
    usage: Option<UsageFields>,
}

impl Answer {
    fn usage(body: &[u8]) -> Option<Usage> {
        serde_json::from_slice::<Answer>(body).ok()?.usage.map(Usage::from_fields)
    }
}

/// Incremental usage reader.
#[derive(Debug)]
pub struct UsageScanner {
    stream: bool,
    /// SSE: the line being assembled. JSON: the body, once it spans several frames.
    buf: Vec<u8>,
    /// JSON: the body while it is one frame (most answers), kept without a copy.
    whole: Option<Bytes>,
    truncated: bool,
    usage: Option<Usage>,
}

impl UsageScanner {
    /// A scanner for an SSE stream (`stream = true`) or a JSON body.
    pub fn new(stream: bool) -> Self {
        Self { stream, buf: Vec::new(), whole: None, truncated: false, usage: None }
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        if self.stream {
            return self.feed_sse(chunk);
        }
        if self.buf.is_empty() && self.whole.is_none() {
            self.whole = Some(chunk.clone());
            return;
        }
        if let Some(first) = self.whole.take() {
            self.buf.extend_from_slice(&first);
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > JSON_KEEP {
            self.truncated = true;
            let cut = self.buf.len() - JSON_TAIL;
            self.buf.drain(..cut);
        }
    }

    fn feed_sse(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            if self.truncated {
                self.truncated = false;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(&chunk[..nl]);
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            chunk = &chunk[nl + 1..];
        }
        if self.buf.len() + chunk.len() > SSE_LINE_MAX {
            // A line this long carries no usage we could afford to parse; skip it.
            self.truncated = true;
            self.buf.clear();
        } else if !self.truncated {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if !contains(data, b"\"usage\"") {
            return;
        }
        if let Some(u) = Answer::usage(data) {
            self.usage = Some(u);
        }
    }

    /// The usage found, once the body has ended.
    pub fn finish(&mut self) -> Option<Usage> {
        if self.stream {
            if !self.buf.is_empty() && !self.truncated {
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            return self.usage;
        }
        if let Some(whole) = &self.whole {
            return Self::answer_usage(whole);
        }
        if !self.truncated {
            return Self::answer_usage(&self.buf);
        }
        // Only the tail is left: parse the value after the last `"usage":`.
        let at = rfind(&self.buf, b"\"usage\"")?;
        let rest = &self.buf[at + 7..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Option<UsageFields>>();
        values.next()?.ok()?.map(Usage::from_fields)
    }
}

impl UsageScanner {
    fn answer_usage(body: &[u8]) -> Option<Usage> {
        if body.len() > JSON_KEEP {
            // One frame larger than what is kept whole: read only its tail, like a
            // body that arrived in pieces.
            let mut tail = Self::new(false);
            tail.truncated = true;
            tail.buf = body[body.len() - JSON_TAIL..].to_vec();
            return tail.finish();
        }
        Answer::usage(body)
    }
}

/// Whether `needle` occurs in `haystack`.
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_a_json_body_split_anywhere() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        for split in [0, 1, 20, body.len() - 1] {
            let mut s = UsageScanner::new(false);
            s.feed(&Bytes::copy_from_slice(&body[..split]));
            s.feed(&Bytes::copy_from_slice(&body[split..]));
            assert_eq!(s.finish(), Some(Usage { prompt: 12, completion: 3, total: 15, cached: 0 }));
        }
    }

    #[test]
    fn reads_usage_from_the_tail_of_a_large_body() {
        let mut s = UsageScanner::new(false);
        s.feed(&Bytes::from_static(b"{\"data\":["));
        for _ in 0..20_000 {
            s.feed(&Bytes::from_static(b"[0.123,0.456,0.789],"));
        }
        s.feed(&Bytes::from_static(br#"[1]],"usage":{"prompt_tokens":40,"total_tokens":40}}"#));
        assert_eq!(s.finish(), Some(Usage { prompt: 40, completion: 0, total: 40, cached: 0 }));
    }

    #[test]
    fn reads_usage_from_one_large_frame_and_ignores_usage_that_is_not_top_level() {
        let mut body = b"{\"data\":[".to_vec();
        while body.len() <= JSON_KEEP {
            body.extend_from_slice(b"[0.123,0.456,0.789],");
        }
        body.extend_from_slice(br#"[1]],"usage":{"prompt_tokens":41,"total_tokens":41}}"#);
        let mut s = UsageScanner::new(false);
        s.feed(&Bytes::from(body));
        assert_eq!(s.finish(), Some(Usage { prompt: 41, completion: 0, total: 41, cached: 0 }));
        let mut s = UsageScanner::new(false);
        s.feed(&Bytes::from_static(br#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn reads_usage_from_the_final_sse_chunk_across_frame_boundaries() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\r\n\r\n\
                      data: [DONE]\n\n";
        for split in [5, 60, 90, stream.len() - 3] {
            let mut s = UsageScanner::new(true);
            s.feed(&Bytes::copy_from_slice(&stream.as_bytes()[..split]));
            s.feed(&Bytes::copy_from_slice(&stream.as_bytes()[split..]));
            assert_eq!(s.finish(), Some(Usage { prompt: 7, completion: 2, total: 9, cached: 4 }), "split {split}");
        }
    }

    #[test]
    fn odd_counts_read_as_zero_without_losing_the_others() {
        let mut s = UsageScanner::new(false);
        s.feed(&Bytes::from_static(
            br#"{"usage":{"prompt_tokens":5,"completion_tokens":null,"total_tokens":-1,"prompt_tokens_details":7,"x":{"y":[1]}}}"#,
        ));
        assert_eq!(s.finish(), Some(Usage { prompt: 5, completion: 0, total: 5, cached: 0 }));
    }

    #[test]
    fn a_stream_without_usage_has_none() {
        let mut s = UsageScanner::new(true);
        s.feed(&Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: [DONE]\n\n"));
        assert_eq!(s.finish(), None);
    }
}
