//! Wall-clock time in the one format pgward records: RFC 3339, UTC, always
//! exactly three fractional digits, so that the strings sort as the times do.

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub fn rfc3339(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_strings_sort_like_times() {
        let times = [
            "2026-11-23T12:00:00Z",
            "2026-11-23T12:00:00.4Z",
            "2026-11-23T12:00:00.45Z",
            "2026-11-23T12:00:01Z",
        ];
        let formatted: Vec<String> = times.iter().map(|t| rfc3339(t.parse().unwrap())).collect();
        assert_eq!(formatted[0], "2026-11-23T12:00:00.000Z");
        assert_eq!(formatted[2], "2026-11-23T12:00:00.450Z");
        let mut sorted = formatted.clone();
        sorted.sort();
        assert_eq!(sorted, formatted);
    }
}
