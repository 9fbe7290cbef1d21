//! Entry points for the `cargo fuzz` targets in `fuzz/` (not an API). Each takes raw
//! bytes, runs one parser at the proxy's edge, and panics only if one of its promises
//! breaks: the fuzzer reports a panic as a crash.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header::RETRY_AFTER};
use prost::Message;
use sidecar_proto::v1 as pb;
use tokio::time::Instant;

use crate::{
    config::{Flags, ProxyConfig},
    proxy::ParsedRequest,
    routing::Bundle,
    snapshot::Snapshot,
    upstream::{Dialect, UsageScanner, retry_after as parse_retry_after},
};

/// The request body check and the `model` splice: any bytes are accepted or refused; an
/// accepted body, given another model, parses again with that model and the same
/// `stream`. Asking for usage as well may refuse a `stream_options` that is not an object
/// (400, as OpenAI does), and otherwise parses again the same way.
pub fn request_body(data: &[u8]) {
    let Ok(parsed) = ParsedRequest::parse(Bytes::copy_from_slice(data)) else { return };
    for want_usage in [false, true] {
        let body = match parsed.upstream_body("fuzz/native-\"model\"", want_usage) {
            Ok(body) => body,
            Err(crate::proxy::ProxyError::BadRequest(m)) if want_usage && m.contains("stream_options") => continue,
            Err(e) => panic!("an accepted body could not be spliced: {e:?}"),
        };
        let again = ParsedRequest::parse(body).expect("a spliced body is still accepted");
        assert_eq!(again.model, "fuzz/native-\"model\"");
        assert_eq!(again.stream, parsed.stream);
    }
}

/// The usage scanner on any bytes cut into frames anywhere: never a panic. The first
/// byte picks JSON or SSE and where the frames are cut.
pub fn usage(data: &[u8]) {
    let Some((&first, body)) = data.split_first() else { return };
    // Bit 0: SSE or JSON; bits 1-2: the dialect; the rest: where frames are cut.
    let dialect =
        [Dialect::OpenAi, Dialect::Responses, Dialect::Anthropic, Dialect::OpenAi][usize::from(first >> 1) & 3];
    let mut scanner = UsageScanner::new(first & 1 == 1, dialect);
    let step = usize::from(first >> 3).max(1);
    for frame in body.chunks(step) {
        scanner.feed(&Bytes::copy_from_slice(frame));
    }
    let _ = scanner.finish();
}

/// `Retry-After` from an upstream: whatever it says, at most a day.
pub fn retry_after(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value);
    assert!(parse_retry_after(&headers).is_none_or(|d| d <= Duration::from_secs(86_400)));
}

/// A snapshot off the wire: refused by field, or applied, and then every backend's limit
/// is enforceable and the routing bundle builds.
pub fn snapshot(data: &[u8]) {
    let Ok(wire) = pb::Snapshot::decode(data) else { return };
    let Ok(snapshot) = Snapshot::try_from(&wire) else { return };
    for b in &snapshot.backends {
        assert!((1..=60).contains(&b.window_seconds));
        assert!(b.window_limit() >= 1 && b.window_limit() <= b.rpm_limit);
        assert!(b.initial_share.is_none_or(|s| s <= b.window_limit()));
    }
    let minute = Duration::from_secs(60);
    let _ = Bundle::prepare(&snapshot, &Bundle::empty(minute), minute, Instant::now());
}

/// A config file (before the first NUL byte) and environment (after it, `NAME=value`
/// lines): resolved, or refused in one line that names the setting.
pub fn config(data: &[u8]) {
    let (file, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let env = String::from_utf8_lossy(env);
    let env: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let path = std::env::temp_dir().join(format!("sidecar-fuzz-{}.toml", std::process::id()));
    let mut f = std::fs::File::create(&path).expect("temp file");
    f.write_all(file).expect("temp file written");
    let flags = Flags { config: Some(path), ..Default::default() };
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    if let Err(e) = ProxyConfig::resolve(&flags, &lookup) {
        assert!(!e.setting.is_empty());
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[cfg(test)]
mod tests {
    /// The entry points run on a few hand-picked inputs, so they are built and working
    /// whether or not a fuzzer runs.
    #[test]
    fn every_entry_point_takes_junk_and_good_input() {
        for input in [&b""[..], b"\0", b"{\"model\":\"m\",\"stream\":true}", b"data: {\"usage\":{}}\n\n", b"1e30"] {
            super::request_body(input);
            super::usage(input);
            super::retry_after(input);
            super::snapshot(input);
            super::config(input);
        }
        super::config(b"port = 9191\n\0SIDECAR_MAX_CONNECTIONS=nope\n");
    }
}
