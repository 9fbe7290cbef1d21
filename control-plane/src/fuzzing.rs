//! Entry points for the `cargo fuzz` targets in `fuzz/` (not an API). Each takes raw
//! bytes, runs one parser at the control plane's edge, and panics only if one of its
//! promises breaks: the fuzzer reports a panic as a crash.

use std::io::Write;

use prost::Message;
use sidecar_proto::v1 as pb;

use crate::{
    config::{ControlConfig, Flags},
    store::UsageCounters,
};

/// A report batch off the wire: refused with a message naming the field, or accepted,
/// and then all its records add up without overflow.
pub fn report_batch(data: &[u8]) {
    let Ok(batch) = pb::ReportBatch::decode(data) else { return };
    match crate::api::convert::report::check_batch(&batch) {
        Ok(records) => {
            let mut total = UsageCounters::default();
            for r in &records {
                total.checked_merge(&r.counters).expect("an accepted batch adds up");
            }
        }
        Err(e) => {
            let status = tonic::Status::from(crate::api::ApiError::from(e));
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(':'), "names the field: {}", status.message());
        }
    }
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
    let dir = std::env::temp_dir().join(format!("sidecar-fuzz-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("control.toml");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(file)).expect("temp file written");
    let flags = Flags { config: Some(path), ..Default::default() };
    let lookup = |name: &str| {
        // The data dir stays in the temp dir whatever the input says.
        if name == "SIDECAR_DATA_DIR" {
            return Some(dir.display().to_string());
        }
        env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    };
    if let Err(e) = ControlConfig::resolve(&flags, &lookup) {
        assert!(!e.to_string().is_empty());
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_entry_point_takes_junk_and_good_input() {
        use prost::Message;
        let good =
            sidecar_proto::v1::ReportBatch { node_id: "n1".into(), boot_id: "b".into(), seq: 1, ..Default::default() }
                .encode_to_vec();
        for input in [&b""[..], b"\0", b"\x0a\x02n1", &good[..]] {
            super::report_batch(input);
            super::config(input);
        }
        super::config(b"listen = \"127.0.0.1:0\"\n\0SIDECAR_RATE_WINDOW_MS=5\n");
    }
}
