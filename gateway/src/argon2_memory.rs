//! argon2's working memory, kept from one password check to the next, and the reading of an
//! entry's parameters.
//!
//! An argon2id check with the default cost needs 19 MiB. Allocated per check and freed on
//! whichever of tokio's blocking threads ran it, glibc kept most of it in its per-thread arenas:
//! 900 logins left the gateway at 867 MiB RSS (`scripts/soak.py`). Kept here, a buffer is taken
//! for one check and given back: there are never more buffers than checks at once (one per
//! core, `auth::Security`'s hashing slots), each as large as the costliest entry checked.

use argon2::password_hash::PasswordHash;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use subtle::ConstantTimeEq as _;

#[derive(Default)]
pub(crate) struct Argon2Memory(Mutex<Vec<Vec<Block>>>);

impl Argon2Memory {
    /// Whether `password` hashes to the argon2 PHC string `phc` (compared in constant time).
    pub(crate) fn verify(&self, phc: &str, password: &[u8]) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return false;
        };
        let parsed = (
            Algorithm::try_from(hash.algorithm),
            hash.version
                .map_or(Ok(Version::default()), Version::try_from),
            argon2_params(&hash),
        );
        let (Ok(algorithm), Ok(version), Ok(params)) = parsed else {
            return false;
        };
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let blocks = params.block_count();
        let mut memory = self.0.lock().pop().unwrap_or_default();
        memory.resize(blocks, Block::default());
        let mut out = vec![0u8; expected.len()];
        let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
            password,
            salt,
            &mut out,
            &mut memory[..blocks],
        );
        self.0.lock().push(memory);
        hashed.is_ok() && bool::from(out.ct_eq(expected.as_bytes()))
    }
}

/// An argon2 entry's parameters. Each name may appear once (argon2 would take the last of a
/// repeated one), and the parallelism `p` is bounded here first: argon2 0.5.3 multiplies it by
/// 8 in 32 bits before checking its own bound, which overflows for a `p` above 2^29 (a panic
/// where overflow is checked; found by the `auth_files` fuzz target, the repeated name too).
pub(crate) fn argon2_params(phc: &PasswordHash<'_>) -> Result<Params, String> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in phc.params.iter() {
        if seen.contains(&name.as_str()) {
            return Err(format!("parameter {} given twice", name.as_str()));
        }
        seen.push(name.as_str());
        if name.as_str() == "p" {
            let p = value.decimal().map_err(|e| e.to_string())?;
            if !(Params::MIN_P_COST..=Params::MAX_P_COST).contains(&p) {
                return Err(format!(
                    "parallelism p={p} outside {}..={}",
                    Params::MIN_P_COST,
                    Params::MAX_P_COST
                ));
            }
        }
    }
    Params::try_from(phc).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    use argon2::PasswordVerifier as _;

    fn phc(password: &str, params: Params) -> String {
        let salt = SaltString::encode_b64(b"sixteen byte slt").expect("salt");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    /// The same verdicts as the argon2 crate's own check, with one buffer for all the checks
    /// made one after another, grown to the costliest.
    #[test]
    fn checks_agree_with_argon2_and_reuse_one_buffer() {
        let memory = Argon2Memory::default();
        let small = phc("right", Params::new(64, 1, 1, None).expect("params"));
        let large = phc("right", Params::new(256, 2, 2, None).expect("params"));
        for _ in 0..3 {
            for entry in [&small, &large] {
                for password in [&b"right"[..], b"wrong", b""] {
                    let theirs = PasswordHash::new(entry)
                        .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok());
                    assert_eq!(
                        memory.verify(entry, password),
                        theirs,
                        "{entry} {password:?}"
                    );
                }
            }
        }
        let buffers = memory.0.lock();
        assert_eq!(buffers.len(), 1);
        assert_eq!(buffers[0].len(), 256);
        drop(buffers);
        assert!(!memory.verify("$argon2id$v=19$garbage", b"right"));
    }
}
