//! RESP, the Redis protocol, as far as tollgate writes it itself: the reservation connection
//! (`store::redis`) and the `redis_stream` sink encode their commands straight into one buffer.

/// Appends one RESP bulk string, `$<len>\r\n<arg>\r\n`, to `out`.
pub(crate) fn bulk(out: &mut Vec<u8>, arg: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}
