//! Calendar arithmetic on unix seconds (proleptic Gregorian, UTC), enough to
//! map a simulated instant to the month, day and weekday the profiles need.

use anyhow::{bail, ensure};

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month 1..=12, day 1..=31) of a day number.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("1..=31");
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("1..=12");
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Weekday of a day number: 0 = Monday … 6 = Sunday.
pub fn weekday(days: i64) -> u32 {
    u32::try_from((days + 3).rem_euclid(7)).expect("0..7")
}

/// "YYYY-MM-DDTHH:MM:SSZ" of unix seconds; [`parse_rfc3339`] reads it back.
pub fn format_rfc3339(t: u64) -> String {
    let days = i64::try_from(t / 86_400).expect("a unix time");
    let (y, m, d) = civil_from_days(days);
    let s = t % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3_600,
        s % 3_600 / 60,
        s % 60
    )
}

/// Parses "YYYY-MM-DDTHH:MM:SSZ" into unix seconds.
pub fn parse_rfc3339(text: &str) -> anyhow::Result<u64> {
    let b = text.as_bytes();
    let well_formed = b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z';
    if !well_formed {
        bail!("{text:?} is not a UTC time like \"2025-06-02T00:00:00Z\"");
    }
    let number = |range: std::ops::Range<usize>| -> anyhow::Result<u32> {
        text[range]
            .parse::<u32>()
            .map_err(|_| anyhow::anyhow!("{text:?} has a non-numeric field"))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day),
        "{text:?} has no such date"
    );
    ensure!(
        hour < 24 && minute < 60 && second < 60,
        "{text:?} has no such time"
    );
    let days = days_from_civil(i64::from(year), month, day);
    ensure!(
        civil_from_days(days) == (i64::from(year), month, day),
        "{text:?} has no such date"
    );
    ensure!(days >= 0, "{text:?} is before 1970");
    let seconds = days * 86_400 + i64::from(hour * 3_600 + minute * 60 + second);
    Ok(u64::try_from(seconds).expect("after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339("2025-06-02T00:00:00Z").unwrap(),
            1_748_822_400
        );
        assert_eq!(
            weekday(1_748_822_400 / 86_400),
            0,
            "2025-06-02 was a Monday"
        );
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert!(parse_rfc3339("2025-02-30T00:00:00Z").is_err());
        assert!(parse_rfc3339("2025-06-02 00:00").is_err());
    }

    #[test]
    fn formatting_reads_back() {
        assert_eq!(format_rfc3339(1_748_822_400), "2025-06-02T00:00:00Z");
        for t in [0, 951_782_399, 1_795_507_920, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)).unwrap(), t);
        }
    }
}
