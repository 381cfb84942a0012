//! The envelope's `time` attribute, written as chrono's serde writes a UTC timestamp
//! (RFC 3339, `Z`, the shortest of no, 3, 6 or 9 fraction digits), byte for byte,
//! but into a stack buffer handed to the serializer as one string. chrono's own
//! `collect_str` reaches JSON as a dozen small writes, each escaped on its own: a
//! request and its reply paid about a microsecond for two timestamps.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serializer;

/// Serializes `Some(time)` as chrono does; `None` never reaches here (the field is
/// skipped when empty).
pub(super) fn serialize<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => match format(time) {
            Some((buf, len)) => serializer
                .serialize_str(std::str::from_utf8(&buf[..len]).expect("the timestamp is ASCII")),
            // Years outside 0..=9999 (chrono writes a sign): chrono's own writer.
            None => serde::Serialize::serialize(time, serializer),
        },
        None => serializer.serialize_none(),
    }
}

/// The longest timestamp written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX: usize = 30;

/// `time` in chrono's serde form, or `None` when the year needs a sign.
fn format(time: &DateTime<Utc>) -> Option<([u8; MAX], usize)> {
    let year = time.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut buf = [0u8; MAX];
    let mut at = 0;
    fn two(buf: &mut [u8; MAX], at: &mut usize, v: u32) {
        buf[*at] = b'0' + (v / 10) as u8;
        buf[*at + 1] = b'0' + (v % 10) as u8;
        *at += 2;
    }
    two(&mut buf, &mut at, year as u32 / 100);
    two(&mut buf, &mut at, year as u32 % 100);
    buf[at] = b'-';
    at += 1;
    two(&mut buf, &mut at, time.month());
    buf[at] = b'-';
    at += 1;
    two(&mut buf, &mut at, time.day());
    buf[at] = b'T';
    at += 1;
    // A leap second is carried in the fraction (>= 1e9), as `60` in the seconds.
    let (mut sec, mut nano) = (time.second(), time.nanosecond());
    if nano >= 1_000_000_000 {
        sec += 1;
        nano -= 1_000_000_000;
    }
    two(&mut buf, &mut at, time.hour());
    buf[at] = b':';
    at += 1;
    two(&mut buf, &mut at, time.minute());
    buf[at] = b':';
    at += 1;
    two(&mut buf, &mut at, sec);
    let (digits, value) = if nano == 0 {
        (0, 0)
    } else if nano % 1_000_000 == 0 {
        (3, nano / 1_000_000)
    } else if nano % 1_000 == 0 {
        (6, nano / 1_000)
    } else {
        (9, nano)
    };
    if digits > 0 {
        buf[at] = b'.';
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + 1 + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += 1 + digits;
    }
    buf[at] = b'Z';
    Some((buf, at + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    #[derive(serde::Serialize)]
    struct Fast(#[serde(serialize_with = "serialize")] Option<DateTime<Utc>>);

    fn same_as_chrono(time: DateTime<Utc>) {
        let ours = serde_json::to_string(&Fast(Some(time))).unwrap();
        let chrono = serde_json::to_string(&time).unwrap();
        assert_eq!(ours, chrono, "{time:?}");
        let ours = rmp_serde::to_vec(&Fast(Some(time))).unwrap();
        assert_eq!(ours, rmp_serde::to_vec(&time).unwrap(), "{time:?}");
    }

    #[test]
    fn every_fraction_length_and_the_edges_match_chrono() {
        let base = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        for nano in [
            0,
            1,
            10,
            999,
            1_000,
            120_000,
            999_000,
            1_000_000,
            5_000_000,
            999_999_999,
            123_456_789,
            1_000_000_000, // a leap second
            1_999_999_999,
        ] {
            let naive = base.and_hms_nano_opt(23, 59, 59, nano).unwrap();
            same_as_chrono(Utc.from_utc_datetime(&naive));
        }
        for (y, m, d) in [
            (0, 1, 1),
            (9999, 12, 31),
            (10_000, 1, 1),
            (-1, 6, 30),
            (1970, 1, 1),
        ] {
            let naive = NaiveDate::from_ymd_opt(y, m, d)
                .unwrap()
                .and_hms_micro_opt(0, 0, 0, 7)
                .unwrap();
            same_as_chrono(Utc.from_utc_datetime(&naive));
        }
        same_as_chrono(Utc::now());
    }

    #[test]
    fn any_timestamp_matches_chrono() {
        // splitmix64 over seconds from year -1000 to 9999 and any nanosecond.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (low, high) = (-93_755_000_000i64, 253_402_300_799i64);
        for _ in 0..100_000 {
            let secs = low + (next() % (high - low) as u64) as i64;
            let nano = match next() % 4 {
                0 => 0,
                1 => (next() % 1_000) as u32 * 1_000_000,
                2 => (next() % 1_000_000) as u32 * 1_000,
                _ => (next() % 1_000_000_000) as u32,
            };
            same_as_chrono(Utc.timestamp_opt(secs, nano).unwrap());
        }
    }
}
