//! Ed25519 key pairs for providers that take a public key (GitHub deploy keys,
//! JumpCloud SSH keys): the private key, in OpenSSH format, is the secret Vault
//! keeps; the public key (`ssh-ed25519 AAAA...`) goes to the provider.

use crate::secret::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

const MAGIC: &[u8] = b"openssh-key-v1\0";
const KEY_TYPE: &[u8] = b"ssh-ed25519";

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn public_blob(pk: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(51);
    put_string(&mut b, KEY_TYPE);
    put_string(&mut b, pk);
    b
}

fn public_line(pk: &[u8; 32]) -> String {
    format!("ssh-ed25519 {}", STANDARD.encode(public_blob(pk)))
}

/// A new key pair: the private key (OpenSSH PEM, comment `comment`) and the public
/// key line without a comment (providers compare it that way).
pub fn generate(comment: &str) -> (Secret, String) {
    let mut seed = Zeroizing::new([0u8; 32]);
    rand::fill(&mut seed[..]);
    let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
    let pk = sk.verifying_key().to_bytes();
    let check: u32 = rand::random();
    let mut private = Zeroizing::new(Vec::with_capacity(160));
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    put_string(&mut private, KEY_TYPE);
    put_string(&mut private, &pk);
    let mut keypair = Zeroizing::new([0u8; 64]);
    keypair[..32].copy_from_slice(&seed[..]);
    keypair[32..].copy_from_slice(&pk);
    put_string(&mut private, &keypair[..]);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut blob = Zeroizing::new(Vec::with_capacity(300));
    blob.extend_from_slice(MAGIC);
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut blob, &public_blob(&pk));
    put_string(&mut blob, &private);
    let b64 = Zeroizing::new(STANDARD.encode(&blob[..]));
    let mut pem = String::with_capacity(b64.len() + 80);
    pem.push_str("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(70) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    (Secret::new(pem), public_line(&pk))
}

/// The public key line of an unencrypted OpenSSH Ed25519 private key, after
/// checking that its private half really derives it.
pub fn public_of(private: &Secret) -> Result<String, &'static str> {
    let body: String = private
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let blob = Zeroizing::new(
        STANDARD
            .decode(body.trim())
            .map_err(|_| "the stored private key is not base64")?,
    );
    let mut r = Reader(&blob[..]);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("the stored value is not an OpenSSH private key");
    }
    if r.string()? != b"none" {
        return Err("the stored private key is encrypted");
    }
    r.string()?;
    r.string()?;
    r.take(4)?;
    let mut public = Reader(r.string()?);
    if public.string()? != KEY_TYPE {
        return Err("the stored private key is not Ed25519");
    }
    let pk: [u8; 32] = public
        .string()?
        .try_into()
        .map_err(|_| "bad public key length")?;
    let mut private_part = Reader(r.string()?);
    private_part.take(8)?;
    private_part.string()?;
    private_part.string()?;
    let pair = private_part.string()?;
    let seed: [u8; 32] = pair
        .get(..32)
        .and_then(|s| s.try_into().ok())
        .ok_or("bad private key length")?;
    let derived = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    if derived != pk {
        return Err("the stored private key does not match its public key");
    }
    Ok(public_line(&pk))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("the stored private key is truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?);
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_private_key_yields_its_public_key() {
        let (private, public) = generate("rekey:run:cred");
        assert!(
            private
                .expose()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        assert!(public.starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"));
        assert_eq!(public_of(&private).unwrap(), public);
        assert!(public_of(&Secret::new("not a key")).is_err());
    }
}
