//! How errors are told: one line holding an error and all its causes.

/// An error and its causes, `outer: inner: innermost`, for a log line or
/// a message that must say everything at once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
