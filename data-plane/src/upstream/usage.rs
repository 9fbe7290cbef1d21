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

/// The response format whose usage is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    /// Chat completions, completions, embeddings: `usage.prompt_tokens`,
    /// `completion_tokens`, `prompt_tokens_details.cached_tokens`; in streams, the usage
    /// chunk.
    #[default]
    OpenAi,
    /// Responses: `usage.input_tokens` (cached ones included), `output_tokens`,
    /// `input_tokens_details.cached_tokens`; in streams, `response.usage` of the final
    /// `response.completed` event. Also reads the response's `id`.
    Responses,
    /// Anthropic Messages: `usage.input_tokens` (cache tokens not included),
    /// `cache_creation_input_tokens`, `cache_read_input_tokens`, `output_tokens`; in
    /// streams, the input side from `message_start` and the output from the last
    /// `message_delta` (`message_start`'s output count is a placeholder).
    Anthropic,
}

/// Tokens of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens (for Anthropic, cache reads and writes included).
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// Total tokens.
    pub total: u64,
    /// Prompt tokens read from a cache.
    pub cached: u64,
    /// Prompt tokens written to a cache (Anthropic's cache creation).
    pub cache_write: u64,
}

impl Usage {
    fn from_fields(f: &UsageFields, dialect: Dialect) -> Self {
        let n = |c: &Option<Count>| c.as_ref().map_or(0, |c| c.0);
        let (prompt, completion, cached, cache_write) = match dialect {
            Dialect::OpenAi => (n(&f.prompt_tokens), n(&f.completion_tokens), f.prompt_tokens_details.0, 0),
            Dialect::Responses => (n(&f.input_tokens), n(&f.output_tokens), f.input_tokens_details.0, 0),
            Dialect::Anthropic => {
                let (write, read) = (n(&f.cache_creation_input_tokens), n(&f.cache_read_input_tokens));
                (n(&f.input_tokens) + write + read, n(&f.output_tokens), read, write)
            }
        };
        let total = match n(&f.total_tokens) {
            0 => prompt + completion,
            t => t,
        };
        Self { prompt, completion, total, cached, cache_write }
    }
}

/// The `usage` object as providers send it. Read leniently: a count that is missing,
/// null or not a whole number is 0, and unknown fields are skipped, so one odd field
/// never loses the rest of the accounting.
#[derive(Deserialize, Default)]
struct UsageFields {
    #[serde(default)]
    prompt_tokens: Option<Count>,
    #[serde(default)]
    completion_tokens: Option<Count>,
    #[serde(default)]
    total_tokens: Option<Count>,
    /// `prompt_tokens_details.cached_tokens`.
    #[serde(default)]
    prompt_tokens_details: CachedTokens,
    #[serde(default)]
    input_tokens: Option<Count>,
    #[serde(default)]
    output_tokens: Option<Count>,
    /// `input_tokens_details.cached_tokens` (Responses).
    #[serde(default)]
    input_tokens_details: CachedTokens,
    #[serde(default)]
    cache_creation_input_tokens: Option<Count>,
    #[serde(default)]
    cache_read_input_tokens: Option<Count>,
}

impl UsageFields {
    /// A later report's counts over this one's, field by field (Anthropic's
    /// `message_delta` over `message_start`).
    fn overlay(&mut self, later: UsageFields) {
        fn take(a: &mut Option<Count>, b: Option<Count>) {
            if b.is_some() {
                *a = b;
            }
        }
        take(&mut self.input_tokens, later.input_tokens);
        take(&mut self.output_tokens, later.output_tokens);
        take(&mut self.cache_creation_input_tokens, later.cache_creation_input_tokens);
        take(&mut self.cache_read_input_tokens, later.cache_read_input_tokens);
    }
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

/// An object nested in a stream event: Anthropic's `message` (in `message_start`),
/// the Responses API's `response`.
#[derive(Deserialize)]
struct Nested {
    #[serde(default)]
    id: Option<String>,
    usage: Option<UsageFields>,
}

/// The fields of an answer (or a stream event) that matter here; the rest is skipped
/// unparsed.
#[derive(Deserialize)]
struct Answer<'a> {
    /// Read as a string only where it is wanted (Responses).
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    usage: Option<UsageFields>,
    #[serde(default)]
    message: Option<Nested>,
    #[serde(default)]
    response: Option<Nested>,
}

impl<'a> Answer<'a> {
    fn parse(body: &'a [u8]) -> Option<Answer<'a>> {
        serde_json::from_slice::<Answer<'a>>(body).ok()
    }

    fn id(&self) -> Option<String> {
        serde_json::from_str(self.id?.get()).ok()
    }
}

/// Incremental usage reader.
#[derive(Debug)]
pub struct UsageScanner {
    stream: bool,
    dialect: Dialect,
    /// SSE: the line being assembled. JSON: the body, once it spans several frames.
    buf: Vec<u8>,
    /// JSON: the body while it is one frame (most answers), kept without a copy.
    whole: Option<Bytes>,
    truncated: bool,
    usage: Option<Usage>,
    /// What only Anthropic and Responses answers need; boxed, as most answers are chat
    /// (the scanner lives in every response body on the hot path).
    extra: Option<Box<Extra>>,
}

/// Scanner state of Anthropic and Responses answers.
#[derive(Debug, Default)]
struct Extra {
    /// Anthropic streams: the input side from `message_start`, and the counts of the
    /// last `message_delta`.
    started: Option<UsageFields>,
    delta: Option<UsageFields>,
    /// Responses: the response's id.
    id: Option<String>,
}

impl std::fmt::Debug for UsageFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageFields")
    }
}

impl UsageScanner {
    /// A scanner for an SSE stream (`stream = true`) or a JSON body in `dialect`.
    pub fn new(stream: bool, dialect: Dialect) -> Self {
        Self { stream, dialect, buf: Vec::new(), whole: None, truncated: false, usage: None, extra: None }
    }

    /// Feeds the next bytes of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        if self.stream {
            return self.feed_sse(chunk);
        }
        if self.buf.is_empty() && self.whole.is_none() {
            if self.dialect == Dialect::Responses {
                self.extra().id = leading_id(chunk);
            }
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
        let Some(answer) = Answer::parse(data) else { return };
        match self.dialect {
            Dialect::OpenAi => {
                if let Some(u) = answer.usage {
                    self.usage = Some(Usage::from_fields(&u, Dialect::OpenAi));
                }
            }
            Dialect::Responses => {
                if let Some(r) = answer.response {
                    let extra = self.extra();
                    if extra.id.is_none() {
                        extra.id = r.id;
                    }
                    if let Some(u) = r.usage {
                        self.usage = Some(Usage::from_fields(&u, Dialect::Responses));
                    }
                }
            }
            Dialect::Anthropic => {
                if let Some(u) = answer.message.and_then(|m| m.usage) {
                    self.extra().started = Some(u);
                } else if let Some(u) = answer.usage {
                    self.extra().delta = Some(u);
                }
            }
        }
    }

    /// The usage found, once the body has ended.
    pub fn finish(&mut self) -> Option<Usage> {
        if self.stream {
            if !self.buf.is_empty() && !self.truncated {
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            if self.dialect == Dialect::Anthropic {
                return self.anthropic_stream_usage();
            }
            return self.usage;
        }
        if let Some(whole) = self.whole.take() {
            return self.answer_usage(&whole);
        }
        if !self.truncated {
            let buf = std::mem::take(&mut self.buf);
            return self.answer_usage(&buf);
        }
        // Only the tail is left: parse the value after the last `"usage":`.
        let at = rfind(&self.buf, b"\"usage\"")?;
        let rest = &self.buf[at + 7..];
        let colon = rest.iter().position(|&b| b == b':')?;
        let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Option<UsageFields>>();
        values.next()?.ok()?.map(|u| Usage::from_fields(&u, self.dialect))
    }

    /// The response's id (Responses only), once the body has ended.
    pub fn response_id(&mut self) -> Option<String> {
        self.extra.as_mut()?.id.take()
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_default()
    }

    /// Anthropic: the input side as `message_start` said (unless the last
    /// `message_delta` restates it), the output from the last `message_delta` only; a
    /// stream that ended without one produced no output the proxy can count.
    fn anthropic_stream_usage(&mut self) -> Option<Usage> {
        let extra = self.extra.as_mut()?;
        let mut fields = match (extra.started.take(), extra.delta.take()) {
            (None, None) => return None,
            (Some(mut start), delta) => {
                start.output_tokens = None;
                if let Some(delta) = delta {
                    start.overlay(delta);
                }
                start
            }
            (None, Some(delta)) => delta,
        };
        fields.total_tokens = None;
        Some(Usage::from_fields(&fields, Dialect::Anthropic))
    }
}

impl UsageScanner {
    /// A whole JSON body's usage (and, for Responses, its id).
    fn answer_usage(&mut self, body: &[u8]) -> Option<Usage> {
        if body.len() > JSON_KEEP {
            // One frame larger than what is kept whole: read only its tail, like a
            // body that arrived in pieces.
            let mut tail = Self::new(false, self.dialect);
            tail.truncated = true;
            tail.buf = body[body.len() - JSON_TAIL..].to_vec();
            return tail.finish();
        }
        let answer = Answer::parse(body)?;
        if self.dialect == Dialect::Responses
            && let Some(id) = answer.id()
        {
            self.extra().id = Some(id);
        }
        answer.usage.map(|u| Usage::from_fields(&u, self.dialect))
    }
}

/// The value of a JSON object's first key when it is `"id"` and a string (OpenAI's
/// Responses objects start with their id), read from the start of the body: the id of a
/// body too large to be kept whole, of which only the tail is parsed.
fn leading_id(chunk: &[u8]) -> Option<String> {
    let head = &chunk[..chunk.len().min(1024)];
    let at = head.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = head[at..].strip_prefix(b"{")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"id\"")?.trim_ascii_start().strip_prefix(b":")?;
    serde_json::Deserializer::from_slice(rest).into_iter::<String>().next()?.ok()
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
            let mut s = UsageScanner::new(false, Dialect::OpenAi);
            s.feed(&Bytes::copy_from_slice(&body[..split]));
            s.feed(&Bytes::copy_from_slice(&body[split..]));
            assert_eq!(s.finish(), Some(Usage { prompt: 12, completion: 3, total: 15, cached: 0, cache_write: 0 }));
        }
    }

    #[test]
    fn reads_usage_from_the_tail_of_a_large_body() {
        let mut s = UsageScanner::new(false, Dialect::OpenAi);
        s.feed(&Bytes::from_static(b"{\"data\":["));
        for _ in 0..20_000 {
            s.feed(&Bytes::from_static(b"[0.123,0.456,0.789],"));
        }
        s.feed(&Bytes::from_static(br#"[1]],"usage":{"prompt_tokens":40,"total_tokens":40}}"#));
        assert_eq!(s.finish(), Some(Usage { prompt: 40, completion: 0, total: 40, cached: 0, cache_write: 0 }));
    }

    #[test]
    fn reads_usage_from_one_large_frame_and_ignores_usage_that_is_not_top_level() {
        let mut body = b"{\"data\":[".to_vec();
        while body.len() <= JSON_KEEP {
            body.extend_from_slice(b"[0.123,0.456,0.789],");
        }
        body.extend_from_slice(br#"[1]],"usage":{"prompt_tokens":41,"total_tokens":41}}"#);
        let mut s = UsageScanner::new(false, Dialect::OpenAi);
        s.feed(&Bytes::from(body));
        assert_eq!(s.finish(), Some(Usage { prompt: 41, completion: 0, total: 41, cached: 0, cache_write: 0 }));
        let mut s = UsageScanner::new(false, Dialect::OpenAi);
        s.feed(&Bytes::from_static(br#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn reads_usage_from_the_final_sse_chunk_across_frame_boundaries() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\r\n\r\n\
                      data: [DONE]\n\n";
        for split in [5, 60, 90, stream.len() - 3] {
            let mut s = UsageScanner::new(true, Dialect::OpenAi);
            s.feed(&Bytes::copy_from_slice(&stream.as_bytes()[..split]));
            s.feed(&Bytes::copy_from_slice(&stream.as_bytes()[split..]));
            assert_eq!(
                s.finish(),
                Some(Usage { prompt: 7, completion: 2, total: 9, cached: 4, cache_write: 0 }),
                "split {split}"
            );
        }
    }

    #[test]
    fn odd_counts_read_as_zero_without_losing_the_others() {
        let mut s = UsageScanner::new(false, Dialect::OpenAi);
        s.feed(&Bytes::from_static(
            br#"{"usage":{"prompt_tokens":5,"completion_tokens":null,"total_tokens":-1,"prompt_tokens_details":7,"x":{"y":[1]}}}"#,
        ));
        assert_eq!(s.finish(), Some(Usage { prompt: 5, completion: 0, total: 5, cached: 0, cache_write: 0 }));
    }

    #[test]
    fn a_stream_without_usage_has_none() {
        let mut s = UsageScanner::new(true, Dialect::OpenAi);
        s.feed(&Bytes::from_static(b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: [DONE]\n\n"));
        assert_eq!(s.finish(), None);
    }

    fn scan(stream: bool, dialect: Dialect, body: &str, step: usize) -> (Option<Usage>, Option<String>) {
        let mut s = UsageScanner::new(stream, dialect);
        for piece in body.as_bytes().chunks(step.max(1)) {
            s.feed(&Bytes::copy_from_slice(piece));
        }
        (s.finish(), s.response_id())
    }

    const ANTHROPIC_STREAM: &str = "event: message_start\n\
        data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_creation_input_tokens\":2,\"cache_read_input_tokens\":4}}}\n\n\
        event: content_block_delta\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}\n\n\
        event: message_delta\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\n\n\
        event: message_stop\n\
        data: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_streams_take_input_from_message_start_and_output_from_message_delta() {
        let want = Usage { prompt: 16, completion: 5, total: 21, cached: 4, cache_write: 2 };
        for step in [1, 7, 64, ANTHROPIC_STREAM.len()] {
            assert_eq!(scan(true, Dialect::Anthropic, ANTHROPIC_STREAM, step).0, Some(want), "step {step}");
        }
        // Cut before the message_delta: message_start's output count is a placeholder,
        // never counted.
        let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: message_delta").unwrap()];
        let (usage, _) = scan(true, Dialect::Anthropic, cut, 9);
        assert_eq!(usage, Some(Usage { prompt: 16, completion: 0, total: 16, cached: 4, cache_write: 2 }));
        // A message_delta that restates the input side (cumulative counts) wins.
        let restated = ANTHROPIC_STREAM.replace("{\"output_tokens\":5}", "{\"output_tokens\":6,\"input_tokens\":11}");
        let (usage, _) = scan(true, Dialect::Anthropic, &restated, 13);
        assert_eq!(usage, Some(Usage { prompt: 17, completion: 6, total: 23, cached: 4, cache_write: 2 }));
    }

    #[test]
    fn anthropic_bodies_count_cache_tokens_in_the_prompt() {
        let body = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"output_tokens":5,"cache_creation_input_tokens":2,"cache_read_input_tokens":4}}"#;
        let want = Usage { prompt: 16, completion: 5, total: 21, cached: 4, cache_write: 2 };
        assert_eq!(scan(false, Dialect::Anthropic, body, 1000).0, Some(want));
        assert_eq!(scan(false, Dialect::Anthropic, body, 3).0, Some(want));
        // count_tokens answers carry no usage: a request without tokens.
        assert_eq!(scan(false, Dialect::Anthropic, r#"{"input_tokens":10}"#, 100).0, None);
    }

    #[test]
    fn responses_usage_and_id_come_from_the_body_or_the_completed_event() {
        let body = r#"{"id":"resp_1","object":"response","output":[],"usage":{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":15}}"#;
        let want = Usage { prompt: 10, completion: 5, total: 15, cached: 4, cache_write: 0 };
        assert_eq!(scan(false, Dialect::Responses, body, 1000), (Some(want), Some("resp_1".into())));
        let stream = format!(
            "event: response.created\ndata: {{\"type\":\"response.created\",\"response\":{{\"id\":\"resp_2\",\"usage\":null}}}}\n\n\
             event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}}\n\n\
             event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{body}}}\n\n"
        );
        for step in [1, 10, stream.len()] {
            assert_eq!(scan(true, Dialect::Responses, &stream, step), (Some(want), Some("resp_2".into())), "{step}");
        }
        // The id wherever it is in a body kept whole.
        let later = r#"{"created_at":1,"id":"resp_3","usage":{"input_tokens":1}}"#;
        assert_eq!(scan(false, Dialect::Responses, later, 5).1, Some("resp_3".into()));
        // Other dialects never read it.
        assert_eq!(scan(false, Dialect::OpenAi, body, 100).1, None);
    }
}
