//! Reading token usage out of a response as it streams past, without holding the body:
//! SSE streams are scanned line by line for the chunk that carries `usage` (the final
//! one, asked for with `stream_options.include_usage`); JSON bodies are kept whole when
//! small, otherwise only their tail, where OpenAI-shaped bodies put `usage`.

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
    fn from_json(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let n = |k: &str| obj.get(k).and_then(Value::as_u64).unwrap_or(0);
        let prompt = n("prompt_tokens");
        let completion = n("completion_tokens");
        let total = match n("total_tokens") {
            0 => prompt + completion,
            t => t,
        };
        let cached = v.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0);
        Some(Self { prompt, completion, total, cached })
    }
}

/// Incremental usage reader.
#[derive(Debug)]
pub struct UsageScanner {
    stream: bool,
    buf: Vec<u8>,
    truncated: bool,
    usage: Option<Usage>,
}

impl UsageScanner {
    /// A scanner for an SSE stream (`stream = true`) or a JSON body.
    pub fn new(stream: bool) -> Self {
        Self { stream, buf: Vec::new(), truncated: false, usage: None }
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.stream {
            self.feed_sse(chunk);
        } else {
            self.buf.extend_from_slice(chunk);
            if self.buf.len() > JSON_KEEP {
                self.truncated = true;
                let cut = self.buf.len() - JSON_TAIL;
                self.buf.drain(..cut);
            }
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
        if let Ok(v) = serde_json::from_slice::<Value>(data)
            && let Some(u) = v.get("usage").and_then(Usage::from_json)
        {
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
        if !self.truncated {
            return serde_json::from_slice::<Value>(&self.buf).ok()?.get("usage").and_then(Usage::from_json);
        }
        // Only the tail is left: parse the value after the last `"usage":`.
        let at = rfind(&self.buf, b"\"usage\"")?;
        let rest = &self.buf[at + 7..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Value>();
        Usage::from_json(&values.next()?.ok()?)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
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
            s.feed(&body[..split]);
            s.feed(&body[split..]);
            assert_eq!(s.finish(), Some(Usage { prompt: 12, completion: 3, total: 15, cached: 0 }));
        }
    }

    #[test]
    fn reads_usage_from_the_tail_of_a_large_body() {
        let mut s = UsageScanner::new(false);
        s.feed(b"{\"data\":[");
        for _ in 0..20_000 {
            s.feed(b"[0.123,0.456,0.789],");
        }
        s.feed(br#"[1]],"usage":{"prompt_tokens":40,"total_tokens":40}}"#);
        assert_eq!(s.finish(), Some(Usage { prompt: 40, completion: 0, total: 40, cached: 0 }));
    }

    #[test]
    fn reads_usage_from_the_final_sse_chunk_across_frame_boundaries() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\r\n\r\n\
                      data: [DONE]\n\n";
        for split in [5, 60, 90, stream.len() - 3] {
            let mut s = UsageScanner::new(true);
            s.feed(&stream.as_bytes()[..split]);
            s.feed(&stream.as_bytes()[split..]);
            assert_eq!(s.finish(), Some(Usage { prompt: 7, completion: 2, total: 9, cached: 4 }), "split {split}");
        }
    }

    #[test]
    fn a_stream_without_usage_has_none() {
        let mut s = UsageScanner::new(true);
        s.feed(b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: [DONE]\n\n");
        assert_eq!(s.finish(), None);
    }
}
