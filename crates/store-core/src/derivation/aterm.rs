//! The `.drv` file format: Nix's ATerm spelling of a derivation.
//!
//! `Derive([outputs],[input drvs],[input srcs],"system","builder",[args],[env])`,
//! with no whitespace and no trailing newline. Strings are printed with
//! Nix's escaping (`"`, `\`, newline, CR and tab); every other byte is copied.
//! Nix prints some fields (paths, output names, hash fields, the system)
//! without escaping; larder escapes every string, which gives the same bytes
//! for every value Nix itself can read back, and a well-formed file for the
//! rest (a system holding a quote, which Nix would write corrupt).

use std::collections::{BTreeMap, BTreeSet};

use crate::content_address::{ContentAddress, ContentAddressMethod};
use crate::hash::{Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath};

use super::output::check_fixed;
use super::{Derivation, DerivationError, DerivationOutput};

impl Derivation {
    /// Parses a `.drv` file. The name is not in the file: it is the `.drv`
    /// path's name without `.drv`. Store paths must be canonical paths in
    /// `store_dir`, and fixed outputs must have the path their content
    /// address gives.
    ///
    /// Strings must be UTF-8: a `.drv` holding other bytes is rejected with
    /// the offset of the first such byte. Lists that are out of order are
    /// accepted (as Nix does) and printed sorted; duplicate names are errors.
    ///
    /// # Errors
    ///
    /// Every error names the byte offset and what was expected or is wrong.
    pub fn parse_aterm(
        bytes: &[u8],
        name: &str,
        store_dir: &StoreDir,
    ) -> Result<Self, DerivationError> {
        let mut drv = Self::new(name)?;
        let mut p = Parser { bytes, pos: 0 };
        if p.peek_literal(b"DrvWithVersion(") {
            p.pos += b"DrvWithVersion(".len();
            let start = p.pos;
            let version = p.string()?;
            return Err(DerivationError::UnsupportedVersion {
                offset: start,
                version,
            });
        }
        p.literal(b"Derive(", "'Derive('")?;

        p.list(|p| {
            let start = p.pos;
            p.byte(b'(', "'(' starting an output")?;
            let output = p.string()?;
            p.byte(b',', "','")?;
            let path_at = p.pos;
            let path = p.string()?;
            p.byte(b',', "','")?;
            let algo = p.string()?;
            p.byte(b',', "','")?;
            let hash = p.string()?;
            p.byte(b')', "')' ending an output")?;
            let parsed =
                parse_output(store_dir, &output, &path, &algo, &hash).map_err(|e| e.at(start))?;
            if drv.outputs.contains_key(&output) {
                return Err(duplicate("output", &output).at(start));
            }
            drv.insert_output(&output, parsed)
                .map_err(|e| e.at(start))?;
            if let DerivationOutput::Fixed(_) = &drv.outputs[&output] {
                check_fixed_path(&drv, store_dir, &output, &path).map_err(|e| e.at(path_at))?;
            }
            Ok(())
        })?;
        p.byte(b',', "','")?;

        p.list(|p| {
            let start = p.pos;
            p.byte(b'(', "'(' starting an input derivation")?;
            let path = p.store_path(store_dir)?;
            p.byte(b',', "','")?;
            if p.peek() == Some(b'(') {
                return Err(DerivationError::DynamicOutputs { drv: path }.at(start));
            }
            let mut outputs = BTreeSet::new();
            p.list(|p| {
                let at = p.pos;
                let output = p.string()?;
                super::output::check_output_name(&output).map_err(|e| e.at(at))?;
                if !outputs.insert(output) {
                    return Err(duplicate("input output", "").at(at));
                }
                Ok(())
            })?;
            p.byte(b')', "')' ending an input derivation")?;
            if outputs.is_empty() {
                return Err(DerivationError::NoInputOutputs(path).at(start));
            }
            if drv.input_drvs.insert(path.clone(), outputs).is_some() {
                return Err(duplicate("input derivation", path.as_str()).at(start));
            }
            Ok(())
        })?;
        p.byte(b',', "','")?;

        p.list(|p| {
            let start = p.pos;
            let path = p.store_path(store_dir)?;
            if !drv.input_srcs.insert(path.clone()) {
                return Err(duplicate("input source", path.as_str()).at(start));
            }
            Ok(())
        })?;
        p.byte(b',', "','")?;
        drv.system = p.string()?;
        p.byte(b',', "','")?;
        drv.builder = p.string()?;
        p.byte(b',', "','")?;
        p.list(|p| {
            let arg = p.string()?;
            drv.args.push(arg);
            Ok(())
        })?;
        p.byte(b',', "','")?;
        p.list(|p| {
            let start = p.pos;
            p.byte(b'(', "'(' starting an environment variable")?;
            let key = p.string()?;
            p.byte(b',', "','")?;
            let value = p.string()?;
            p.byte(b')', "')' ending an environment variable")?;
            if drv.env.contains_key(&key) {
                return Err(duplicate("environment variable", &key).at(start));
            }
            drv.env.insert(key, value);
            Ok(())
        })?;
        p.byte(b')', "')' ending the derivation")?;
        if p.pos != bytes.len() {
            return Err(DerivationError::TrailingData { offset: p.pos });
        }
        Ok(drv)
    }

    /// Prints the derivation as Nix writes it to its `.drv` file.
    #[must_use]
    pub fn to_aterm(&self, store_dir: &StoreDir) -> String {
        write_aterm(self, store_dir, false, None)
    }
}

/// Prints a derivation. With `mask_outputs`, output paths and the
/// environment variables named after outputs are blanked (Nix's masked
/// form for hash modulo). With `inputs`, the input derivations are replaced
/// by those keys (hashes in hex) and output sets.
pub(crate) fn write_aterm(
    drv: &Derivation,
    store_dir: &StoreDir,
    mask_outputs: bool,
    inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
) -> String {
    let mut w = String::with_capacity(1024);
    w.push_str("Derive([");
    for (i, (name, output)) in drv.outputs.iter().enumerate() {
        comma(&mut w, i);
        w.push('(');
        escaped(&mut w, name);
        w.push(',');
        let (path, algo, hash) = match output {
            DerivationOutput::InputAddressed(path) => (Some(path.clone()), String::new(), None),
            DerivationOutput::Fixed(ca) => (
                Some(drv.fixed_output_path(store_dir, name, ca)),
                ca.method.render_with_algo(ca.hash.algo()),
                Some(ca.hash.to_base16()),
            ),
            DerivationOutput::Floating { method, algo } => {
                (None, method.render_with_algo(*algo), None)
            }
            DerivationOutput::Deferred => (None, String::new(), None),
        };
        match path {
            Some(path) if !mask_outputs => escaped(&mut w, &store_dir.display(&path)),
            _ => w.push_str("\"\""),
        }
        w.push(',');
        escaped(&mut w, &algo);
        w.push(',');
        match hash {
            // Nix blanks only the path when masking: the hash stays.
            Some(hash) => escaped(&mut w, &hash),
            None => w.push_str("\"\""),
        }
        w.push(')');
    }
    w.push_str("],[");
    let mut write_input = |i: usize, key: &str, outputs: &BTreeSet<String>| {
        comma(&mut w, i);
        w.push('(');
        escaped(&mut w, key);
        w.push_str(",[");
        for (j, output) in outputs.iter().enumerate() {
            comma(&mut w, j);
            escaped(&mut w, output);
        }
        w.push_str("])");
    };
    match inputs {
        Some(inputs) => {
            for (i, (key, outputs)) in inputs.iter().enumerate() {
                write_input(i, key, outputs);
            }
        }
        None => {
            for (i, (path, outputs)) in drv.input_drvs.iter().enumerate() {
                write_input(i, &store_dir.display(path), outputs);
            }
        }
    }
    w.push_str("],[");
    for (i, path) in drv.input_srcs.iter().enumerate() {
        comma(&mut w, i);
        escaped(&mut w, &store_dir.display(path));
    }
    w.push_str("],");
    escaped(&mut w, &drv.system);
    w.push(',');
    escaped(&mut w, &drv.builder);
    w.push_str(",[");
    for (i, arg) in drv.args.iter().enumerate() {
        comma(&mut w, i);
        escaped(&mut w, arg);
    }
    w.push_str("],[");
    for (i, (key, value)) in drv.env.iter().enumerate() {
        comma(&mut w, i);
        w.push('(');
        escaped(&mut w, key);
        w.push(',');
        if mask_outputs && drv.outputs.contains_key(key) {
            w.push_str("\"\"");
        } else {
            escaped(&mut w, value);
        }
        w.push(')');
    }
    w.push_str("])");
    w
}

fn comma(w: &mut String, i: usize) {
    if i > 0 {
        w.push(',');
    }
}

/// Nix's `printString`: quotes, escaping `"`, `\`, newline, CR and tab.
fn escaped(w: &mut String, s: &str) {
    w.push('"');
    let mut rest = s;
    while let Some(i) = rest.find(['"', '\\', '\n', '\r', '\t']) {
        w.push_str(&rest[..i]);
        w.push_str(match rest.as_bytes()[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => "\\t",
        });
        rest = &rest[i + 1..];
    }
    w.push_str(rest);
    w.push('"');
}

fn duplicate(what: &str, name: &str) -> DerivationError {
    DerivationError::BadOutput {
        output: name.to_owned(),
        reason: format!("duplicate {what}"),
    }
}

/// Reads the four fields of an output tuple.
pub(crate) fn parse_output(
    store_dir: &StoreDir,
    output: &str,
    path: &str,
    algo: &str,
    hash: &str,
) -> Result<DerivationOutput, DerivationError> {
    let bad = |reason: &str| DerivationError::BadOutput {
        output: output.to_owned(),
        reason: reason.to_owned(),
    };
    if algo.is_empty() {
        if !hash.is_empty() {
            return Err(bad("it has a hash but no hash algorithm"));
        }
        if path.is_empty() {
            return Ok(DerivationOutput::Deferred);
        }
        return Ok(DerivationOutput::InputAddressed(store_dir.parse(path)?));
    }
    let (method, hash_algo) = ContentAddressMethod::parse_with_algo(algo).map_err(|source| {
        DerivationError::ContentAddress {
            output: output.to_owned(),
            source,
        }
    })?;
    if hash == "impure" {
        return Err(DerivationError::Impure {
            output: output.to_owned(),
        });
    }
    if hash.is_empty() {
        if !path.is_empty() {
            return Err(bad(
                "a floating content-addressed output must not have a path",
            ));
        }
        return Ok(DerivationOutput::Floating {
            method,
            algo: hash_algo,
        });
    }
    let ca = ContentAddress {
        method,
        hash: parse_hex(output, hash, hash_algo)?,
    };
    check_fixed(output, &ca)?;
    Ok(DerivationOutput::Fixed(ca))
}

/// A fixed output's hash in a `.drv` is lowercase base16; other spellings
/// are refused so that printing gives the same bytes back.
fn parse_hex(output: &str, hash: &str, algo: HashAlgo) -> Result<Hash, DerivationError> {
    let is_hex = hash.len() == 2 * algo.size()
        && hash
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !is_hex {
        return Err(DerivationError::BadOutput {
            output: output.to_owned(),
            reason: format!(
                "hash '{hash}' is not {} lowercase hexadecimal digits",
                2 * algo.size()
            ),
        });
    }
    Hash::parse_unprefixed(hash, algo).map_err(|source| DerivationError::Hash {
        output: output.to_owned(),
        source,
    })
}

fn check_fixed_path(
    drv: &Derivation,
    store_dir: &StoreDir,
    output: &str,
    path: &str,
) -> Result<(), DerivationError> {
    let Some(DerivationOutput::Fixed(ca)) = drv.outputs.get(output) else {
        return Ok(());
    };
    let expected = store_dir.display(&drv.fixed_output_path(store_dir, output, ca));
    if path != expected {
        return Err(DerivationError::FixedPathMismatch {
            output: output.to_owned(),
            path: path.to_owned(),
            expected,
        });
    }
    Ok(())
}

/// A cursor over the `.drv` bytes.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn peek_literal(&self, literal: &[u8]) -> bool {
        self.bytes[self.pos..].starts_with(literal)
    }

    fn literal(&mut self, literal: &[u8], expected: &'static str) -> Result<(), DerivationError> {
        if !self.peek_literal(literal) {
            return Err(self.expected(expected));
        }
        self.pos += literal.len();
        Ok(())
    }

    fn byte(&mut self, byte: u8, expected: &'static str) -> Result<(), DerivationError> {
        if self.peek() != Some(byte) {
            return Err(self.expected(expected));
        }
        self.pos += 1;
        Ok(())
    }

    fn expected(&self, expected: &'static str) -> DerivationError {
        DerivationError::Syntax {
            offset: self.pos,
            expected,
        }
    }

    /// A bracketed, comma-separated list; `item` reads one element.
    fn list(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), DerivationError>,
    ) -> Result<(), DerivationError> {
        self.byte(b'[', "'[' starting a list")?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.expected("',' or ']' in a list")),
            }
        }
    }

    /// A quoted string: `\n`, `\r`, `\t` are control characters and `\X` is
    /// `X` for any other byte, as in Nix's parser.
    fn string(&mut self) -> Result<String, DerivationError> {
        self.byte(b'"', "'\"' starting a string")?;
        let start = self.pos;
        let mut has_escape = false;
        let end = loop {
            match self.bytes.get(self.pos) {
                None => {
                    self.pos = self.bytes.len();
                    return Err(self.expected("'\"' ending a string"));
                }
                Some(b'"') => break self.pos,
                Some(b'\\') => {
                    has_escape = true;
                    self.pos += 2;
                }
                Some(_) => self.pos += 1,
            }
        };
        self.pos = end + 1;
        let raw = &self.bytes[start..end];
        // Escapes are ASCII, so the raw bytes are UTF-8 exactly when the
        // unescaped ones are, and the raw offset is the one to report.
        let raw = std::str::from_utf8(raw).map_err(|e| DerivationError::NotUtf8 {
            offset: start + e.valid_up_to(),
        })?;
        if !has_escape {
            return Ok(raw.to_owned());
        }
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            // The scan above only stops on an unescaped quote, so a
            // backslash is always followed by the character it escapes.
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        }
        Ok(out)
    }

    fn store_path(&mut self, store_dir: &StoreDir) -> Result<StorePath, DerivationError> {
        let start = self.pos;
        let s = self.string()?;
        store_dir
            .parse(&s)
            .map_err(|e| DerivationError::from(e).at(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn escapes_round_trip() {
        let mut drv = Derivation::new("x").unwrap();
        drv.builder = "a\"b\\c\nd\re\tf\u{1}é".to_owned();
        let text = drv.to_aterm(&dir());
        assert!(text.contains(r#""a\"b\\c\nd\re\tf"#), "{text}");
        assert_eq!(
            Derivation::parse_aterm(text.as_bytes(), "x", &dir()).unwrap(),
            drv
        );
    }

    #[test]
    fn unknown_escape_is_the_character() {
        let text = br#"Derive([],[],[],"s","\q",[],[])"#;
        let drv = Derivation::parse_aterm(text, "x", &dir()).unwrap();
        assert_eq!(drv.builder, "q");
    }

    #[test]
    fn errors_name_the_offset() {
        let err =
            Derivation::parse_aterm(b"Derive([],[],[],\"s\",\"b\",[],[]", "x", &dir()).unwrap_err();
        assert!(
            matches!(err, DerivationError::Syntax { offset: 29, .. }),
            "{err}"
        );
        let err = Derivation::parse_aterm(b"Derive([],[],[],\"s\",\"b\xff\",[],[])", "x", &dir())
            .unwrap_err();
        assert!(
            matches!(err, DerivationError::NotUtf8 { offset: 22 }),
            "{err}"
        );
        let err = Derivation::parse_aterm(b"Derive([],[],[],\"s\",\"b", "x", &dir()).unwrap_err();
        assert!(err.to_string().contains("ending a string"), "{err}");
        let err = Derivation::parse_aterm(b"Derive([],[],[],\"s\",\"b\",[],[])x", "x", &dir())
            .unwrap_err();
        assert!(matches!(err, DerivationError::TrailingData { offset: 30 }));
    }

    #[test]
    fn backslash_at_the_end() {
        let err = Derivation::parse_aterm(b"Derive([],[],[],\"s\\", "x", &dir()).unwrap_err();
        assert!(
            matches!(err, DerivationError::Syntax { offset: 19, .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_impure_and_bad_outputs() {
        let impure = br#"Derive([("out","","r:sha256","impure")],[],[],"s","b",[],[])"#;
        let err = Derivation::parse_aterm(impure, "x", &dir()).unwrap_err();
        assert!(err.to_string().contains("impure"), "{err}");
        let bad = br#"Derive([("a/b","","","")],[],[],"s","b",[],[])"#;
        assert!(Derivation::parse_aterm(bad, "x", &dir()).is_err());
        let dup = br#"Derive([("out","","",""),("out","","","")],[],[],"s","b",[],[])"#;
        assert!(Derivation::parse_aterm(dup, "x", &dir()).is_err());
        let upper = format!(
            r#"Derive([("out","/nix/store/x","sha256","{}")],[],[],"s","b",[],[])"#,
            "A".repeat(64)
        );
        assert!(Derivation::parse_aterm(upper.as_bytes(), "x", &dir()).is_err());
    }
}
