//! Wall-clock helpers: epoch milliseconds and the log line timestamp.
//!
//! The formatting is done here (UTC, civil-from-days) rather than with a date crate: the
//! executor only ever needs one format, and every dependency costs flash on the device.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the admin uses them.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `yyyy-MM-dd HH:mm:ss` in UTC, the reference's log line prefix.
pub fn format_ts(ms: i64) -> String {
    let mut s = String::with_capacity(19);
    push_ts(&mut s, ms);
    s
}

/// Appends [`format_ts`]'s text to `out`: each log line starts with it, and the `format!`
/// machinery was a measurable part of writing a run's lines under load.
pub fn push_ts(out: &mut String, ms: i64) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    match u32::try_from(y) {
        Ok(y) if y <= 9999 => {
            push2(out, y / 100);
            push2(out, y % 100);
        }
        _ => out.push_str(&format!("{y:04}")),
    }
    // `rem` is below 86,400: the casts cannot truncate.
    let rem = rem as u32;
    for (sep, v) in [
        ('-', m),
        ('-', d),
        (' ', rem / 3600),
        (':', (rem % 3600) / 60),
        (':', rem % 60),
    ] {
        out.push(sep);
        push2(out, v);
    }
}

/// Two decimal digits of `v` (below 100).
fn push2(out: &mut String, v: u32) {
    out.push(char::from(b'0' + (v / 10 % 10) as u8));
    out.push(char::from(b'0' + (v % 10) as u8));
}

/// Howard Hinnant's algorithm: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ts(0), "1970-01-01 00:00:00");
        assert_eq!(format_ts(1_717_171_717_000), "2024-05-31 16:08:37");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_ts(-1), "1969-12-31 23:59:59");
        assert_eq!(format_ts(253_402_300_800_000), "10000-01-01 00:00:00");
    }

    /// The digit writer says what `format!` said before it, over many instants.
    #[test]
    fn writes_what_format_wrote() {
        let by_format = |ms: i64| {
            let secs = ms.div_euclid(1000);
            let rem = secs.rem_euclid(86_400);
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
                rem / 3600,
                (rem % 3600) / 60,
                rem % 60
            )
        };
        let mut ms = -62_135_596_800_000i64; // year 1
        while ms < 4_102_444_800_000 {
            assert_eq!(format_ts(ms), by_format(ms), "{ms}");
            ms += 86_399_999 * 7 + 12_345;
        }
    }
}
