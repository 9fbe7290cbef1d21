//! Small helpers shared by the control plane's modules.

use rand::RngCore;

/// Now as unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A random id with a type prefix, e.g. `bkd_3f9a0c1d2e4b5a69`.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Client input as it may be echoed in an error message: at most 64 characters, then `…`,
/// so an error never repeats a huge input back.
pub fn clip(input: &str) -> std::borrow::Cow<'_, str> {
    clip_to(input, 64)
}

/// `input` cut to at most `max` characters, then `…`.
pub fn clip_to(input: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(max) {
        None => input.into(),
        Some((at, _)) => format!("{}…", &input[..at]).into(),
    }
}

/// Longest error message the API sends: a field path and a reason with the input they
/// echo, clipped, fit well within it; anything longer repeats too much input.
pub const MAX_ERROR_MESSAGE: usize = 512;

#[cfg(test)]
mod tests {
    #[test]
    fn clip_keeps_short_input_and_cuts_long_input_at_a_character() {
        assert_eq!(super::clip("bkd_1"), "bkd_1");
        let long = "é".repeat(100);
        let clipped = super::clip(&long);
        assert_eq!(clipped.chars().count(), 65);
        assert!(clipped.ends_with('…'));
    }
}
