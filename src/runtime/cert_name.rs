//! The subject common name (CN) of an X.509 certificate, read by a small DER walk.
//!
//! Owns: [`subject_common_name`], used by `use_identity_as_username` to turn a verified
//! client certificate into an MQTT user name.
//! Must not: verify anything (rustls has verified the chain before we are called), or
//! panic on any input: every length and tag is checked, nothing is indexed unchecked.
//!
//! Why not a crate: rustls exposes the peer certificate only as DER, and the X.509
//! parsers (`x509-parser`, `x509-cert`) bring an ASN.1 stack of several crates for the
//! one field we need. The path to it is fixed by RFC 5280: Certificate ->
//! tbsCertificate -> (optional `[0]` version, serial, signature algorithm, issuer,
//! validity) -> subject, a SEQUENCE of SETs of (OID, value) pairs.

/// DER tags we walk through.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_VERSION: u8 = 0xA0;
const TAG_UTF8_STRING: u8 = 0x0C;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;
const TAG_BMP_STRING: u8 = 0x1E;
/// The content octets of OID 2.5.4.3 (id-at-commonName).
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
/// Length octets beyond which we refuse (4 GiB is far past any certificate).
const LENGTH_OCTETS_MAX: usize = 4;

/// A cursor over consecutive DER TLVs.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Der<'a> {
        Der { rest: bytes }
    }

    /// The next TLV as (tag, contents); None at the end or on malformed input.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let octets = (first & 0x7F) as usize;
            // 0x80 is BER's indefinite length, which DER forbids.
            if octets == 0 || octets > LENGTH_OCTETS_MAX {
                return None;
            }
            let (len_bytes, after) = rest.split_at_checked(octets)?;
            rest = after;
            len_bytes.iter().fold(0usize, |n, &b| (n << 8) | b as usize)
        };
        let (contents, after) = rest.split_at_checked(len)?;
        self.rest = after;
        Some((tag, contents))
    }

    /// The next TLV's contents if it has tag `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, contents) if t == tag => Some(contents),
            _ => None,
        }
    }
}

/// The first common name in the subject of the DER certificate `cert`, or None if the
/// certificate has none, or it is not a string type we read (UTF8String,
/// PrintableString, IA5String, BMPString), or the DER is malformed.
pub(crate) fn subject_common_name(cert: &[u8]) -> Option<String> {
    let certificate = Der::new(cert).expect(TAG_SEQUENCE)?;
    let tbs = Der::new(certificate).expect(TAG_SEQUENCE)?;
    let mut fields = Der::new(tbs);
    let (tag, _) = fields.next()?;
    if tag == TAG_VERSION {
        fields.next()?; // serial number
    }
    fields.expect(TAG_SEQUENCE)?; // signature algorithm
    fields.expect(TAG_SEQUENCE)?; // issuer
    fields.expect(TAG_SEQUENCE)?; // validity
    let subject = fields.expect(TAG_SEQUENCE)?;
    let mut rdns = Der::new(subject);
    while let Some(rdn) = rdns.expect(TAG_SET) {
        let mut attributes = Der::new(rdn);
        while let Some(attribute) = attributes.expect(TAG_SEQUENCE) {
            let mut pair = Der::new(attribute);
            if pair.expect(TAG_OID)? != OID_COMMON_NAME {
                continue;
            }
            let (tag, value) = pair.next()?;
            return decode_string(tag, value);
        }
    }
    None
}

/// A directory string's value as UTF-8.
fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        TAG_UTF8_STRING | TAG_PRINTABLE_STRING | TAG_IA5_STRING => {
            std::str::from_utf8(value).ok().map(str::to_owned)
        }
        TAG_BMP_STRING => {
            if value.len() % 2 != 0 {
                return None;
            }
            let units = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLV with a short or long length, as DER writes it.
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(contents);
        out
    }

    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        tlv(
            TAG_SET,
            &tlv(TAG_SEQUENCE, &[tlv(TAG_OID, oid), tlv(tag, value)].concat()),
        )
    }

    /// A certificate skeleton with the given subject RDNs (the fields before the
    /// subject are placeholders of the right tags).
    fn cert(version: bool, subject: &[Vec<u8>]) -> Vec<u8> {
        let mut tbs = Vec::new();
        if version {
            tbs.extend(tlv(TAG_VERSION, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(TAG_SEQUENCE, &tlv(TAG_OID, &[1, 2])));
        tbs.extend(tlv(
            TAG_SEQUENCE,
            &attribute(&OID_COMMON_NAME, TAG_UTF8_STRING, b"issuer"),
        ));
        tbs.extend(tlv(TAG_SEQUENCE, &[0u8; 30]));
        tbs.extend(tlv(TAG_SEQUENCE, &subject.concat()));
        tbs.extend(tlv(TAG_SEQUENCE, &[0u8; 200])); // public key: long form length
        tlv(
            TAG_SEQUENCE,
            &[
                tlv(TAG_SEQUENCE, &tbs),
                tlv(TAG_SEQUENCE, &[]),
                tlv(0x03, &[0]),
            ]
            .concat(),
        )
    }

    const OID_ORG: [u8; 3] = [0x55, 0x04, 0x0A];

    #[test]
    fn finds_the_subject_cn_not_the_issuer_cn() {
        let subject = [
            attribute(&OID_ORG, TAG_UTF8_STRING, b"org"),
            attribute(&OID_COMMON_NAME, TAG_PRINTABLE_STRING, b"device-7"),
        ];
        assert_eq!(
            subject_common_name(&cert(true, &subject)).as_deref(),
            Some("device-7")
        );
        assert_eq!(
            subject_common_name(&cert(false, &subject)).as_deref(),
            Some("device-7"),
            "v1 certificates have no version field"
        );
    }

    #[test]
    fn reads_utf8_and_bmp_strings() {
        let utf8 = [attribute(
            &OID_COMMON_NAME,
            TAG_UTF8_STRING,
            "capteur-é".as_bytes(),
        )];
        assert_eq!(
            subject_common_name(&cert(true, &utf8)).as_deref(),
            Some("capteur-é")
        );
        let bmp: Vec<u8> = "ab".encode_utf16().flat_map(u16::to_be_bytes).collect();
        let bmp = [attribute(&OID_COMMON_NAME, TAG_BMP_STRING, &bmp)];
        assert_eq!(
            subject_common_name(&cert(true, &bmp)).as_deref(),
            Some("ab")
        );
    }

    #[test]
    fn no_cn_or_odd_string_type_gives_none() {
        let no_cn = [attribute(&OID_ORG, TAG_UTF8_STRING, b"org")];
        assert_eq!(subject_common_name(&cert(true, &no_cn)), None);
        let teletex = [attribute(&OID_COMMON_NAME, 0x14, b"x")];
        assert_eq!(subject_common_name(&cert(true, &teletex)), None);
        let bad_utf8 = [attribute(&OID_COMMON_NAME, TAG_UTF8_STRING, &[0xFF])];
        assert_eq!(subject_common_name(&cert(true, &bad_utf8)), None);
    }

    #[test]
    fn reads_the_cn_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ternmq");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "device-42");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            subject_common_name(cert.der()).as_deref(),
            Some("device-42")
        );
    }

    #[test]
    fn malformed_der_never_panics() {
        let good = cert(
            true,
            &[attribute(&OID_COMMON_NAME, TAG_UTF8_STRING, b"name")],
        );
        // Every truncation and every single-byte corruption.
        for len in 0..good.len() {
            let _ = subject_common_name(&good[..len]);
        }
        for i in 0..good.len() {
            for b in [0x00, 0x7F, 0x80, 0x84, 0x85, 0xFF] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = subject_common_name(&bad);
            }
        }
        assert_eq!(subject_common_name(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(
            subject_common_name(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            None
        );
    }
}
