//! Just enough ELF to tell a static executable from a dynamic one.

/// `PT_INTERP`: the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;

/// Whether the 64-bit little-endian ELF image `bytes` names a program
/// interpreter; `None` when it is not such an image.
pub(crate) fn has_interpreter(bytes: &[u8]) -> Option<bool> {
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff =
        usize::try_from(u64::from_le_bytes(bytes.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16::from_le_bytes(bytes.get(0x36..0x38)?.try_into().ok()?));
    let phnum = usize::from(u16::from_le_bytes(bytes.get(0x38..0x3a)?.try_into().ok()?));
    for index in 0..phnum {
        let start = phoff.checked_add(index.checked_mul(phentsize)?)?;
        let kind = u32::from_le_bytes(bytes.get(start..start.checked_add(4)?)?.try_into().ok()?);
        if kind == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_test_binary_is_dynamic_and_garbage_is_not_elf() {
        let me = std::fs::read("/proc/self/exe").expect("reading /proc/self/exe");
        assert_eq!(has_interpreter(&me), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(has_interpreter(b"\x7fELF\x02\x01"), None);
    }

    #[test]
    fn busybox_static_has_no_interpreter_when_installed() {
        match std::fs::read(crate::spec::DEFAULT_SHELL_SOURCE) {
            Ok(bytes) => assert_eq!(has_interpreter(&bytes), Some(false)),
            Err(_) => eprintln!("skipped: {} is absent", crate::spec::DEFAULT_SHELL_SOURCE),
        }
    }
}
