//! Where the provider says a key stands against its limits, from the headers on every
//! response: OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as
//! Go-style durations: `1s`, `6m0s`, `1.5s`, `20ms`) and Anthropic's
//! `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
//! (resets as RFC 3339 times). Plain seconds are accepted for a reset too. Anything that
//! does not parse is ignored, never an error: these headers only ever help.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Longest reset taken from a header; beyond it the header is treated as nonsense.
pub const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

/// One budget the provider reports: its limit, what is left, and when it refills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// The provider's limit.
    pub limit: Option<u64>,
    /// What is left of it now.
    pub remaining: Option<u64>,
    /// Until it refills (to the limit), from now.
    pub reset: Option<Duration>,
}

impl Budget {
    fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// Every budget a response reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests.
    pub requests: Option<Budget>,
    /// Tokens (input and output together).
    pub tokens: Option<Budget>,
    /// Input tokens (Anthropic).
    pub input_tokens: Option<Budget>,
    /// Output tokens (Anthropic).
    pub output_tokens: Option<Budget>,
}

impl RateLimitHeaders {
    /// Whether the response carried any of them.
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.input_tokens.is_none() && self.output_tokens.is_none()
    }
}

/// One budget's header values as found, not yet parsed.
#[derive(Default, Clone, Copy)]
struct Raw<'a> {
    limit: Option<&'a str>,
    remaining: Option<&'a str>,
    reset: Option<&'a str>,
}

impl Raw<'_> {
    fn budget(self, now: SystemTime) -> Option<Budget> {
        let count = |v: Option<&str>| v.and_then(|v| v.trim().parse::<u64>().ok());
        let b = Budget {
            limit: count(self.limit),
            remaining: count(self.remaining),
            reset: self.reset.and_then(|v| reset(v, now)),
        };
        (!b.is_empty()).then_some(b)
    }
}

/// Reads both header families; `now` turns RFC 3339 resets into durations. It runs on
/// every response, so it makes one pass over the headers, allocates nothing, and parses
/// only the values it found.
pub fn parse(headers: &HeaderMap, now: SystemTime) -> RateLimitHeaders {
    // [OpenAI requests, OpenAI tokens, Anthropic requests, tokens, input, output]
    let mut raw = [Raw::default(); 6];
    let mut found = false;
    for (name, value) in headers {
        let name = name.as_str();
        let (slot, field) = if let Some(rest) = name.strip_prefix("x-ratelimit-") {
            // x-ratelimit-{limit,remaining,reset}-{requests,tokens}
            let Some((field, what)) = rest.split_once('-') else { continue };
            match what {
                "requests" => (0, field),
                "tokens" => (1, field),
                _ => continue,
            }
        } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
            // anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}
            let Some((what, field)) = rest.rsplit_once('-') else { continue };
            match what {
                "requests" => (2, field),
                "tokens" => (3, field),
                "input-tokens" => (4, field),
                "output-tokens" => (5, field),
                _ => continue,
            }
        } else {
            continue;
        };
        let Ok(value) = value.to_str() else { continue };
        let r = &mut raw[slot];
        match field {
            "limit" => r.limit = Some(value),
            "remaining" => r.remaining = Some(value),
            "reset" => r.reset = Some(value),
            _ => continue,
        }
        found = true;
    }
    if !found {
        return RateLimitHeaders::default();
    }
    RateLimitHeaders {
        requests: raw[0].budget(now).or_else(|| raw[2].budget(now)),
        tokens: raw[1].budget(now).or_else(|| raw[3].budget(now)),
        input_tokens: raw[4].budget(now),
        output_tokens: raw[5].budget(now),
    }
}

/// Whether a 429's error body says the limit hit was `model`'s own: its message names
/// the model (OpenAI: "Rate limit reached for gpt-4o in organization org-… on requests
/// per min"; Anthropic and NVIDIA NIM name the model likewise). Looks at `error.message`
/// and a top-level `message`; anything else (no JSON, no message, another model) is the
/// key's limit.
pub fn names_model(body: &[u8], model: &str) -> bool {
    if model.is_empty() {
        return false;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return false };
    let message = value.pointer("/error/message").or_else(|| value.get("message")).and_then(|m| m.as_str());
    let Some(message) = message else { return false };
    let (message, model) = (message.to_ascii_lowercase(), model.to_ascii_lowercase());
    // The name as a whole token: "gpt-4o" is not named by "gpt-4o-mini".
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':');
    message.match_indices(&model).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let rest = &message[at + model.len()..];
        let ends = match rest.chars().next() {
            None => true,
            // "… for gpt-4o." ends a sentence; "gpt-4o.5" would be another name.
            Some('.') => !rest[1..].starts_with(|c: char| c.is_ascii_alphanumeric()),
            Some(c) => !part_of_name(c),
        };
        before.is_none_or(|c| !part_of_name(c)) && ends
    })
}

/// A reset: a Go-style duration (`6m0s`, `1.5s`, `20ms`), plain seconds (`30`, `0.5`), or
/// an RFC 3339 time (from `now`; a time already past is 0). `None` for anything else, or
/// beyond [`MAX_RESET`].
pub fn reset(text: &str, now: SystemTime) -> Option<Duration> {
    let text = text.trim();
    let d = if let Ok(secs) = text.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 || secs > MAX_RESET.as_secs_f64() {
            return None;
        }
        Duration::from_secs_f64(secs)
    } else if let Some(d) = go_duration(text) {
        d
    } else {
        let at = humantime::parse_rfc3339_weak(text).ok()?;
        at.duration_since(now).unwrap_or_default()
    };
    (d <= MAX_RESET).then_some(d)
}

/// A Go `time.Duration` string: one or more `<number><unit>` with units `h`, `m`, `s`,
/// `ms`, `us`/`µs`, `ns`; numbers may have a fraction.
fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
        if !total.is_finite() || total > MAX_RESET.as_secs_f64() {
            return None;
        }
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn openai_headers_with_go_durations() {
        let now = SystemTime::now();
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6ms"),
        ]);
        let r = parse(&h, now);
        assert_eq!(
            r.requests,
            Some(Budget { limit: Some(60), remaining: Some(0), reset: Some(Duration::from_secs(360)) })
        );
        assert_eq!(r.tokens.unwrap().reset, Some(Duration::from_millis(6)));
        assert_eq!((r.input_tokens, r.output_tokens), (None, None));
    }

    #[test]
    fn anthropic_headers_with_rfc3339_resets() {
        let now = humantime::parse_rfc3339("2026-12-03T12:00:00Z").unwrap();
        let h = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "3"),
            ("anthropic-ratelimit-requests-reset", "2026-12-03T12:00:05Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            ("anthropic-ratelimit-input-tokens-reset", "2026-12-03T11:59:00Z"),
        ]);
        let r = parse(&h, now);
        assert_eq!(
            r.requests,
            Some(Budget { limit: Some(50), remaining: Some(3), reset: Some(Duration::from_secs(5)) })
        );
        assert_eq!(r.input_tokens.unwrap().reset, Some(Duration::ZERO), "a reset already past is now");
        assert_eq!(r.tokens, None);
    }

    #[test]
    fn durations_in_every_form_and_garbage_refused() {
        let now = SystemTime::now();
        for (text, ms) in
            [("1s", 1000), ("1.5s", 1500), ("20ms", 20), ("1h2m3s", 3_723_000), ("30", 30_000), ("0.5", 500)]
        {
            assert_eq!(reset(text, now), Some(Duration::from_millis(ms)), "{text}");
        }
        for bad in ["", "s", "1x", "-1", "1s-", "NaN", "inf", "1e400", "99999999h", "tomorrow", "2026-13-45T00:00:00Z"]
        {
            assert_eq!(reset(bad, now), None, "{bad}");
        }
        assert!(parse(&headers(&[("x-ratelimit-remaining-requests", "lots")]), now).is_empty());
    }

    #[test]
    fn a_429_names_the_model_when_its_message_does() {
        let openai = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1.","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(names_model(openai, "gpt-4o"));
        assert!(names_model(openai, "GPT-4o"), "case does not matter");
        assert!(!names_model(openai, "gpt-4"), "a prefix of the name is another model");
        assert!(!names_model(openai, "gpt-4o-mini"));
        let mini = br#"{"error":{"message":"Rate limit reached for gpt-4o-mini on tokens per min."}}"#;
        assert!(!names_model(mini, "gpt-4o"), "gpt-4o-mini is not gpt-4o");
        assert!(names_model(mini, "gpt-4o-mini"));
        let end = br#"{"error":{"message":"Too many requests for meta/llama-3.1-8b."}}"#;
        assert!(names_model(end, "meta/llama-3.1-8b"), "a full stop ends the name");
        let anthropic = br#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for claude-sonnet-4 of 50 requests per minute."}}"#;
        assert!(names_model(anthropic, "claude-sonnet-4"));
        let top = br#"{"message":"rate limit exceeded for model nv-embed"}"#;
        assert!(names_model(top, "nv-embed"));
        // The key's limit, or nothing to read: not the model's.
        assert!(!names_model(br#"{"error":{"message":"Rate limit reached for requests"}}"#, "gpt-4o"));
        assert!(!names_model(b"Too Many Requests: gpt-4o", "gpt-4o"), "not JSON");
        assert!(!names_model(br#"{"error":"gpt-4o"}"#, "gpt-4o"), "no message");
        assert!(!names_model(openai, ""));
    }

    proptest! {
        /// Any body and model name: an answer, never a panic (the name is cut anywhere).
        #[test]
        fn any_error_body_is_read_without_panicking(message in "\\PC{0,80}", model in "\\PC{0,12}") {
            let body = serde_json::json!({"error": {"message": message}}).to_string();
            let _ = names_model(body.as_bytes(), &model);
            if !model.is_empty() && message.eq_ignore_ascii_case(&model) {
                prop_assert!(names_model(body.as_bytes(), &model));
            }
        }

        /// Any text: a reset within bounds or none, never a panic.
        #[test]
        fn any_text_is_a_bounded_reset_or_none(text in ".{0,80}") {
            if let Some(d) = reset(&text, SystemTime::now()) {
                prop_assert!(d <= MAX_RESET);
            }
        }

        /// A duration written the way Go writes it reads back to the millisecond.
        #[test]
        fn go_durations_round_trip(ms in 0u64..86_400_000) {
            let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, (ms % 60_000) as f64 / 1000.0);
            let text = match (h, m) {
                (0, 0) => format!("{s}s"),
                (0, _) => format!("{m}m{s}s"),
                _ => format!("{h}h{m}m{s}s"),
            };
            let d = reset(&text, SystemTime::now()).unwrap();
            prop_assert!((d.as_secs_f64() * 1000.0 - ms as f64).abs() < 0.01, "{} -> {:?}", text, d);
        }

        /// An RFC 3339 reset N seconds ahead is N seconds.
        #[test]
        fn rfc3339_resets_are_time_from_now(secs in 0u64..86_400) {
            let now = humantime::parse_rfc3339("2026-12-03T00:00:00Z").unwrap();
            let at = humantime::format_rfc3339(now + Duration::from_secs(secs)).to_string();
            prop_assert_eq!(reset(&at, now), Some(Duration::from_secs(secs)));
        }
    }
}
