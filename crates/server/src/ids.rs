//! Random identifiers: sessions, cells, messages.

use rand::Rng;

/// A random 96-bit id in hex (sessions, cell request ids: unguessable).
pub fn new_id() -> String {
    let bytes: [u8; 12] = rand::thread_rng().gen();
    hex(&bytes)
}

/// A random UUID (version 4) in its usual form: session ids, which are also Jupyter kernel
/// ids, and Jupyter servers only route ids of that shape.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A random 256-bit token in hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    hex(&bytes)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_and_distinct() {
        let (a, b) = (super::new_id(), super::new_id());
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(super::new_token().len(), 64);
        let u = super::new_uuid();
        let groups: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&u[14..15], "4");
    }
}
