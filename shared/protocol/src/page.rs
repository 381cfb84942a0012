//! Paging of list replies: every list takes a capped `limit` and an opaque `cursor`,
//! and answers with `next_cursor` while there may be more, so that no reply grows with
//! history past the server's `max_payload`.

/// The page size when a list request names none.
pub const DEFAULT_LIMIT: usize = 50;

/// The largest page size a list request may ask for; larger asks are cut to it.
pub const MAX_LIMIT: usize = 500;

/// The page size for a request's `limit`: [`DEFAULT_LIMIT`] when absent, at least 1,
/// at most [`MAX_LIMIT`].
pub fn limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_capped() {
        assert_eq!(limit(None), DEFAULT_LIMIT);
        assert_eq!(limit(Some(0)), 1);
        assert_eq!(limit(Some(5000)), MAX_LIMIT);
        assert_eq!(limit(Some(7)), 7);
    }
}
