//! `--rtc base=utc|localtime|YYYY-MM-DDTHH:MM:SS`: QEMU's option, base only.

use anyhow::{bail, Result};
use ox86::RtcBase;

/// Parses the value of `--rtc`.
pub fn parse_rtc(spec: &str) -> Result<RtcBase> {
    let mut base = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("base", "localtime")) => {
                base = Some(RtcBase::Localtime {
                    utc_offset: local_utc_offset(),
                })
            }
            Some(("base", v)) => base = Some(RtcBase::parse(v).map_err(anyhow::Error::msg)?),
            _ => bail!(
                "bad --rtc '{spec}' (use base=utc, base=localtime or base=YYYY-MM-DDTHH:MM:SS)"
            ),
        }
    }
    match base {
        Some(b) => Ok(b),
        None => {
            bail!("bad --rtc '{spec}' (use base=utc, base=localtime or base=YYYY-MM-DDTHH:MM:SS)")
        }
    }
}

/// The host time zone's offset from UTC now, in seconds (0 if unknown).
fn local_utc_offset() -> i64 {
    // SAFETY: `time` with a null pointer only returns the time; `localtime_r` writes
    // only the `tm` it is given, which lives on this stack frame.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_qemu_bases_and_refuses_the_rest() {
        assert_eq!(parse_rtc("base=utc").unwrap(), RtcBase::Utc);
        assert_eq!(
            parse_rtc("base=2024-01-01T00:00:00").unwrap(),
            RtcBase::At(1_704_067_200)
        );
        assert!(matches!(
            parse_rtc("base=localtime").unwrap(),
            RtcBase::Localtime { .. }
        ));
        for bad in [
            "",
            "utc",
            "base=",
            "base=yesterday",
            "clock=host",
            "base=utc,x=1",
        ] {
            assert!(parse_rtc(bad).is_err(), "{bad}");
        }
    }
}
