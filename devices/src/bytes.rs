//! Serde for fixed-size byte arrays of any length (serde's own arrays stop at 32): as
//! a byte string, e.g. `#[serde(with = "crate::bytes")]`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

/// Writes `a` as a byte string.
pub fn serialize<S: Serializer, const N: usize>(a: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(a)
}

/// Reads a byte string of exactly `N` bytes.
pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    let v: Vec<u8> = Deserialize::deserialize(d)?;
    let n = v.len();
    v.try_into()
        .map_err(|_| D::Error::custom(format!("{n} bytes where {N} were expected")))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "crate::bytes")]
        a: [u8; 100],
    }

    #[test]
    fn round_trips_and_checks_the_length() {
        let t = T { a: [7; 100] };
        let v = postcard::to_stdvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<T>(&v).unwrap(), t);
        let short = postcard::to_stdvec(&(&[1u8, 2, 3][..],)).unwrap();
        assert!(postcard::from_bytes::<T>(&short).is_err());
    }
}
