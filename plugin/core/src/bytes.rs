//! Byte comparison eight bytes at a time, for the component's `memcmp`.
//!
//! Every ordered map of the core compares ids and addresses as bytes, through `memcmp`. The
//! C library of `wasm32-wasip2` compares one byte per loop step, and ids often share a long
//! head (Entra object ids of one tenant, switchboard ids such as `sb-00042`): at 100,000
//! users that loop was 40 % of the guest's CPU while a mapping was built. The component
//! exports [`compare`] as its `memcmp`.

/// Compares `a` and `b`, of one length, as `memcmp` does: negative, 0 or positive as `a`'s
/// first differing byte is below, absent or above `b`'s. Calls no `memcmp` itself. (Of
/// slices of two lengths it compares the shorter one's length only: not slice order.)
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    debug_assert_eq!(a.len(), b.len(), "memcmp compares two runs of one length");
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(word(a, i));
        let y = u64::from_le_bytes(word(b, i));
        if x != y {
            // Little-endian: the lowest set bit of the difference is in the first byte
            // that differs.
            let k = i + ((x ^ y).trailing_zeros() / 8) as usize;
            return i32::from(a[k]) - i32::from(b[k]);
        }
        i += 8;
    }
    while i < n {
        if a[i] != b[i] {
            return i32::from(a[i]) - i32::from(b[i]);
        }
        i += 1;
    }
    0
}

fn word(s: &[u8], at: usize) -> [u8; 8] {
    let mut w = [0; 8];
    w.copy_from_slice(&s[at..at + 8]);
    w
}

#[cfg(test)]
mod tests {
    use super::compare;

    #[test]
    fn orders_as_slices_do_at_every_length_and_position() {
        let base: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for len in 0..base.len() {
            let a = &base[..len];
            assert_eq!(compare(a, a), 0, "equal at length {len}");
            for at in 0..len {
                for delta in [1u8, 0x80, 0xff] {
                    let mut b = a.to_vec();
                    b[at] = b[at].wrapping_add(delta);
                    // A later byte that differs the other way must not decide.
                    if at + 1 < len {
                        b[len - 1] = a[len - 1].wrapping_sub(1);
                    }
                    let want = a.cmp(&b[..]);
                    assert_eq!(compare(a, &b).signum(), want as i32, "length {len}, byte {at}, +{delta}");
                    assert_eq!(compare(&b, a).signum(), -(want as i32), "length {len}, byte {at}, +{delta}");
                }
            }
        }
    }
}
