//! Node identity: an ed25519 key pair. The NodeId is the 32-byte public key,
//! so any peer can check a signature against the id it dialled.

use crate::Error;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use once_cell::sync::Lazy;
use std::fs;
use std::io::Write;
use std::path::Path;

pub use macula_nat_proto::id::NodeId;

#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

/// Identity of this OS process when no key file is configured. Kept for the
/// life of the VM so a restarted supervisor child keeps the same NodeId.
static VM_IDENTITY: Lazy<Identity> = Lazy::new(Identity::generate);

impl Identity {
    pub fn generate() -> Self {
        Identity { key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    pub fn vm_default() -> Self {
        VM_IDENTITY.clone()
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// Loads the 32-byte secret seed at `path`, creating it (mode 0600,
    /// written to an exclusive temporary file and renamed, so a crash never
    /// leaves a half-written key) when it does not exist. Blocking file IO:
    /// call it off the BEAM's schedulers (the binding's `node_open` runs on
    /// a dirty IO scheduler).
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::BadKeyFile(format!("expected 32 bytes, found {}", bytes.len()))
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate();
                id.save(path)?;
                Ok(id)
            }
            Err(e) => Err(Error::BadKeyFile(e.to_string())),
        }
    }

    /// Written to a temporary file beside `path` that nobody can have
    /// prepared: a random name, created exclusively (`O_EXCL`, so an
    /// existing file or symlink there fails instead of being followed),
    /// mode 0600 from its creation, synced, then renamed over `path`.
    fn save(&self, path: &Path) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let bad = |e: std::io::Error| Error::BadKeyFile(e.to_string());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(bad)?;
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
        let tmp = path.with_file_name(name);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(bad)?;
        let written = f.write_all(&self.key.to_bytes()).and_then(|_| f.sync_all()).and_then(|_| fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(bad(e));
        }
        Ok(())
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::from_bytes(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// Checks `sig` over `msg` against the public key `node_id`.
pub fn verify(node_id: &NodeId, msg: &[u8], sig: &[u8; 64]) -> bool {
    match VerifyingKey::from_bytes(node_id.as_bytes()) {
        Ok(vk) => vk.verify(msg, &Signature::from_bytes(sig)).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let id = Identity::generate();
        let sig = id.sign(b"hello");
        assert!(verify(&id.node_id(), b"hello", &sig));
        assert!(!verify(&id.node_id(), b"hellO", &sig));
        assert!(!verify(&Identity::generate().node_id(), b"hello", &sig));
    }

    #[test]
    fn key_file_round_trip_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mnat-id-{}", std::process::id()));
        let path = dir.join("node.key");
        let _ = fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&path).unwrap();
        let b = Identity::load_or_create(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left beside it.
        let left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("node.key")]);
        fs::write(&path, b"short").unwrap();
        assert!(matches!(Identity::load_or_create(&path), Err(Error::BadKeyFile(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The old predictable name (`node.tmp`) as a symlink to a file of
    /// someone else's: the key is not written through it.
    #[test]
    fn key_file_is_not_written_through_a_prepared_temporary_name() {
        let dir = std::env::temp_dir().join(format!("mnat-id-sym-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("node.tmp")).unwrap();
        let path = dir.join("node.key");
        let a = Identity::load_or_create(&path).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(Identity::load_or_create(&path).unwrap().node_id(), a.node_id());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vm_identity_is_stable() {
        assert_eq!(Identity::vm_default().node_id(), Identity::vm_default().node_id());
    }
}
