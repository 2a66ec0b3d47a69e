//! Memory sizes as users write them: `256M`, `1G`, `512K`, `64` (MiB, as in QEMU).

/// Parses a memory size; a bare number means MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some(c) if c.is_ascii_digit() => (t, 1 << 20),
        _ => return Err(format!("bad memory size '{s}' (use e.g. 64M, 1G)")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad memory size '{s}' (use e.g. 64M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("memory size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64 << 20);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
