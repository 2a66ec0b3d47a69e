//! Where the RTC's time starts: the host's clock (UTC or local time) or a fixed date
//! and time, in QEMU's spelling (`--rtc base=utc|localtime|YYYY-MM-DDTHH:MM:SS`).
//!
//! The RTC then runs on guest time. Under `--icount` the default is a fixed date
//! ([`ICOUNT_RTC_BASE`]), so that nothing the guest reads depends on when it ran.

use ox86_devices::cmos::{days_from_civil, days_in_month};

/// The RTC's start under `--icount` when no base is given: 2024-01-01T00:00:00.
pub const ICOUNT_RTC_BASE: i64 = 1_704_067_200;
/// The latest time the RTC can show: 9999-12-31T23:59:59.
const LATEST: i64 = 253_402_300_799;

/// Where the RTC's time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcBase {
    /// The host's time, in UTC, when the machine is built.
    Utc,
    /// The host's local time when the machine is built: UTC shifted by `utc_offset`
    /// seconds (east of Greenwich positive), as the host's time zone gives it.
    Localtime {
        /// Seconds to add to UTC.
        utc_offset: i64,
    },
    /// A fixed date and time, in seconds since 1970-01-01T00:00:00 (as the RTC shows
    /// it: no time zone).
    At(i64),
}

impl RtcBase {
    /// Parses what `--rtc` accepts after `base=` except `localtime`, whose offset
    /// only the host knows: `utc`, `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD` (midnight).
    pub fn parse(s: &str) -> Result<RtcBase, String> {
        if s == "utc" {
            return Ok(RtcBase::Utc);
        }
        parse_datetime(s).map(RtcBase::At).ok_or_else(|| {
            format!("bad RTC base '{s}' (use utc, localtime, YYYY-MM-DDTHH:MM:SS or YYYY-MM-DD)")
        })
    }

    /// The RTC's start in seconds since 1970-01-01T00:00:00 as it shows it, with the
    /// host's time now `host_utc` (seconds since the epoch, UTC).
    pub fn start_secs(self, host_utc: i64) -> u64 {
        let t = match self {
            RtcBase::Utc => host_utc,
            RtcBase::Localtime { utc_offset } => host_utc.saturating_add(utc_offset),
            RtcBase::At(t) => t,
        };
        t.clamp(0, LATEST) as u64
    }
}

/// `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD`, from 1970 to 9999, to seconds since the
/// epoch; None if malformed or out of range.
fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |f: &str, len: usize| -> Option<u32> {
        (f.len() == len && f.bytes().all(|b| b.is_ascii_digit()))
            .then(|| f.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some() || !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if day == 0 || day > days_in_month(i64::from(y), m) {
        return None;
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut f = t.split(':');
            let v = (num(f.next()?, 2)?, num(f.next()?, 2)?, num(f.next()?, 2)?);
            if f.next().is_some() || v.0 > 23 || v.1 > 59 || v.2 > 59 {
                return None;
            }
            v
        }
    };
    let days = days_from_civil(i64::from(y), m, day);
    Some(days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_spellings() {
        assert_eq!(RtcBase::parse("utc"), Ok(RtcBase::Utc));
        assert_eq!(
            RtcBase::parse("2024-01-01T00:00:00"),
            Ok(RtcBase::At(ICOUNT_RTC_BASE))
        );
        assert_eq!(
            RtcBase::parse("2024-01-01"),
            Ok(RtcBase::At(ICOUNT_RTC_BASE))
        );
        // `date -u -d 2006-06-17T16:01:21 +%s`
        assert_eq!(
            RtcBase::parse("2006-06-17T16:01:21"),
            Ok(RtcBase::At(1_150_560_081))
        );
        assert_eq!(RtcBase::parse("2000-02-29"), Ok(RtcBase::At(951_782_400)));
        for bad in [
            "",
            "now",
            "2024-1-01",
            "2024-01-01T",
            "2024-01-01T24:00:00",
            "1969-12-31",
            "2023-02-29",
            "2024-13-01",
            "2024-01-01T00:00",
            "2024-01-01T00:00:00Z",
            "+024-01-01",
            "2024-01-01T00:00:60",
        ] {
            assert!(RtcBase::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn starts_from_the_host_or_the_fixed_date() {
        assert_eq!(RtcBase::Utc.start_secs(1000), 1000);
        assert_eq!(
            RtcBase::Localtime { utc_offset: 3600 }.start_secs(1000),
            4600
        );
        assert_eq!(RtcBase::Localtime { utc_offset: -3600 }.start_secs(1000), 0);
        assert_eq!(RtcBase::At(5).start_secs(1000), 5);
        assert_eq!(RtcBase::At(i64::MAX).start_secs(0), LATEST as u64);
    }
}
