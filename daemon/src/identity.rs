//! The node's one key and the names derived from it. One ed25519 key signs
//! offers, attestations and meter reports (the participant id is its public
//! key), authenticates the libp2p connection (the peer id is the same key)
//! and is the `did:key`. Key and API token files are created with mode 0600
//! and never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail, ensure};
use dharti_protocol::types::ParticipantId;
use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};

/// The key, in the forms the daemon needs.
#[derive(Clone)]
pub struct Identity {
    pub signing: SigningKey,
    pub keypair: Keypair,
    pub participant: ParticipantId,
    pub peer_id: PeerId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("participant", &self.participant)
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn from_secret(secret: [u8; 32]) -> anyhow::Result<Identity> {
        let signing = SigningKey::from_bytes(&secret);
        let mut bytes = secret;
        let keypair = Keypair::ed25519_from_bytes(&mut bytes).context("ed25519 secret key")?;
        let participant = ParticipantId(signing.verifying_key().to_bytes());
        let peer_id = keypair.public().to_peer_id();
        Ok(Identity {
            signing,
            keypair,
            participant,
            peer_id,
        })
    }

    pub fn generate() -> anyhow::Result<Identity> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        Identity::from_secret(secret)
    }

    pub fn did(&self) -> String {
        did_key(&self.participant)
    }

    /// Reads a key file written by [`Identity::write`]; refuses one that
    /// others may read.
    pub fn load(path: &Path) -> anyhow::Result<Identity> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "cannot read the key {} (create one with `dharti init`)",
                path.display()
            )
        })?;
        let mode = meta.permissions().mode() & 0o777;
        ensure!(
            mode & 0o077 == 0,
            "the key {} has mode {mode:o}: others may read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("the key {} is not 64 hex digits", path.display()))?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes);
        Identity::from_secret(secret)
    }

    /// Writes the secret as hex, mode 0600; never overwrites.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_secret(path, &hex::encode(self.signing.to_bytes()))
    }
}

/// Creates `path` with mode 0600 and `text`; fails if it exists.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (does it exist already?)", path.display()))?;
    writeln!(file, "{text}")?;
    file.sync_all()?;
    Ok(())
}

/// A fresh API token: 32 random bytes as hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex::encode(bytes))
}

pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the API token {} (create one with `dharti init`)",
            path.display()
        )
    })?;
    let token = text.trim().to_string();
    if token.len() < 32 {
        bail!(
            "the API token in {} is shorter than 32 characters",
            path.display()
        );
    }
    Ok(token)
}

/// The libp2p peer id of a participant (the same ed25519 key).
pub fn peer_id_of(participant: &ParticipantId) -> Option<PeerId> {
    let key = ed25519::PublicKey::try_from_bytes(&participant.0).ok()?;
    Some(PublicKey::from(key).to_peer_id())
}

/// `did:key` of an ed25519 key: multicodec 0xed01, base58btc, prefix `z`.
pub fn did_key(participant: &ParticipantId) -> String {
    let mut bytes = vec![0xed, 0x01];
    bytes.extend_from_slice(&participant.0);
    format!("did:key:z{}", base58(&bytes))
}

/// Bitcoin's base58 alphabet, as did:key uses.
fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    // Base-58 digits, least significant first.
    let mut digits: Vec<u8> = Vec::new();
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base58_known_vectors() {
        assert_eq!(base58(b"Hello World!"), "2NEpo7TZRRrLZSi2U");
        assert_eq!(base58(&[0, 0, 1]), "112");
    }

    #[test]
    fn did_key_of_the_w3c_test_vector() {
        // did:key spec example: ed25519 public key of the test vector.
        let key = hex::decode("2e6fcce36701dc791488e0d0b1745cc1e33a4c1c9fcc41c63bd343dbbe0970e6")
            .unwrap();
        let mut id = [0u8; 32];
        id.copy_from_slice(&key);
        assert_eq!(
            did_key(&ParticipantId(id)),
            "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
        );
    }

    #[test]
    fn one_key_three_names() {
        let id = Identity::generate().unwrap();
        assert_eq!(peer_id_of(&id.participant), Some(id.peer_id));
        assert!(id.did().starts_with("did:key:z6Mk"));
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("dharti-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let id = Identity::generate().unwrap();
        id.write(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(id.write(&path).is_err());
        assert_eq!(Identity::load(&path).unwrap().participant, id.participant);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
