//! `str::parse::<f64>`, to the bit, without the standard library's float parser.
//!
//! The standard parser (Eisel-Lemire with a big-decimal fallback) brings a table of 128-bit
//! powers of five and its own big-decimal code: about 14 KB of the gzipped bundle, most of it
//! the table, which does not compress. The gateway parses a float three times, none of them
//! on a hot path (a wait an upstream asks for, a setting, a CSV cell), so here the value is
//! worked out exactly instead, with a small big-integer division: the same grammar, the same
//! result for every input (the tests check it against the standard parser), only slower.

use std::cmp::Ordering;

/// `s.parse::<f64>().ok()`: the same grammar (an optional sign, then `inf`, `infinity` or
/// `nan` in any case, or digits with at most one `.` and at least one digit, then an optional
/// exponent) and the same value, rounded to nearest, ties to even.
pub fn parse(s: &str) -> Option<f64> {
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if s.eq_ignore_ascii_case("inf") || s.eq_ignore_ascii_case("infinity") {
        f64::INFINITY
    } else if s.eq_ignore_ascii_case("nan") {
        f64::NAN
    } else {
        unsigned(s.as_bytes())?
    };
    Some(if negative { -v } else { v })
}

/// At most this many significant digits decide a double's rounding: past them only whether
/// any is not zero counts (halfway points between doubles have at most 767).
const MAX_DIGITS: usize = 768;

/// A decimal number with no sign.
fn unsigned(s: &[u8]) -> Option<f64> {
    let mut digits = Vec::new();
    let (mut exp10, mut any, mut sticky, mut dot) = (0i64, false, false, false);
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if c == b'.' && !dot {
            dot = true;
        } else if c.is_ascii_digit() {
            any = true;
            exp10 -= i64::from(dot);
            if digits.len() == MAX_DIGITS {
                exp10 += 1;
                sticky |= c != b'0';
            } else if c != b'0' || !digits.is_empty() {
                digits.push(c - b'0');
            }
        } else {
            break;
        }
        i += 1;
    }
    if !any {
        return None;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        let negative = s.get(i) == Some(&b'-');
        if matches!(s.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let start = i;
        let mut e = 0i64;
        while let Some(c) = s.get(i).filter(|c| c.is_ascii_digit()) {
            // the standard parser stops adding digits here
            if e < 0x10000 {
                e = 10 * e + i64::from(c - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        exp10 += if negative { -e } else { e };
    }
    if i != s.len() {
        return None;
    }
    let lead = digits.len() as i64 - 1 + exp10;
    if digits.is_empty() || lead < -324 {
        // below 1e-324, under half the least subnormal
        return Some(0.0);
    }
    if lead > 308 {
        return Some(f64::INFINITY);
    }
    // the value is n / d, exactly (and a little more if `sticky`)
    let mut n = Vec::new();
    for d in digits {
        mul_add(&mut n, 10, d.into());
    }
    let mut d = vec![1];
    for _ in 0..exp10.unsigned_abs() {
        mul_add(if exp10 < 0 { &mut d } else { &mut n }, 10, 0);
    }
    // q = n / d / 2^lsb has 53 or 54 bits, or fewer when the value is subnormal
    let k = bits(&n) as i64 - bits(&d) as i64;
    let mut lsb = (k - 53).max(-1074);
    if lsb < 0 {
        n = shl(&n, lsb.unsigned_abs() as usize);
    } else {
        d = shl(&d, lsb as usize);
    }
    let mut q = 0u64;
    for b in (0..55).rev() {
        let t = shl(&d, b);
        if cmp(&n, &t) != Ordering::Less {
            sub(&mut n, &t);
            q |= 1 << b;
        }
    }
    // how the rest compares with half a unit in the last place
    let mut above = cmp(&shl(&n, 1), &d);
    if q >> 53 != 0 {
        // the bit dropped is the half, the rest (and `sticky`) is above it
        above = if q & 1 == 0 {
            Ordering::Less
        } else if n.is_empty() && !sticky {
            Ordering::Equal
        } else {
            Ordering::Greater
        };
        q >>= 1;
        lsb += 1;
    } else if above == Ordering::Equal && sticky {
        above = Ordering::Greater;
    }
    if above == Ordering::Greater || (above == Ordering::Equal && q & 1 == 1) {
        q += 1;
    }
    Some(q as f64 * pow2(lsb))
}

/// 2^e, for e from -1074 (the least subnormal) to 1023.
fn pow2(e: i64) -> f64 {
    if e < -1022 {
        f64::from_bits(1 << (e + 1074))
    } else {
        f64::from_bits(((e + 1023) as u64) << 52)
    }
}

// Unsigned big integers: 32-bit limbs, least significant first, no zero limbs on top (zero
// has none).

/// x = x * m + a.
fn mul_add(x: &mut Vec<u32>, m: u32, a: u32) {
    let mut carry = u64::from(a);
    for limb in x.iter_mut() {
        let v = u64::from(*limb) * u64::from(m) + carry;
        *limb = v as u32;
        carry = v >> 32;
    }
    if carry != 0 {
        x.push(carry as u32);
    }
}

/// The number of bits of x.
fn bits(x: &[u32]) -> usize {
    x.last().map_or(0, |top| 32 * x.len() - top.leading_zeros() as usize)
}

/// x * 2^by.
fn shl(x: &[u32], by: usize) -> Vec<u32> {
    if x.is_empty() {
        return Vec::new();
    }
    let (limbs, by) = (by / 32, by % 32);
    let mut out = vec![0; limbs];
    let mut carry = 0u32;
    for &limb in x {
        out.push((limb << by) | carry);
        carry = if by == 0 { 0 } else { limb >> (32 - by) };
    }
    if carry != 0 {
        out.push(carry);
    }
    out
}

fn cmp(a: &[u32], b: &[u32]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.iter().rev().cmp(b.iter().rev()))
}

/// a = a - b, for b <= a.
fn sub(a: &mut Vec<u32>, b: &[u32]) {
    let mut borrow = 0i64;
    for (i, limb) in a.iter_mut().enumerate() {
        let v = i64::from(*limb) - i64::from(b.get(i).copied().unwrap_or(0)) - borrow;
        *limb = v as u32;
        borrow = i64::from(v < 0);
    }
    while a.last() == Some(&0) {
        a.pop();
    }
}

// checked against the standard parser with proptest, a native-only dev-dependency
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(s: &str) {
        let ours = parse(s).map(f64::to_bits);
        let std = s.parse::<f64>().ok().map(f64::to_bits);
        assert_eq!(ours, std, "{s:?}");
    }

    #[test]
    fn hard_cases_read_as_the_standard_parser_reads_them() {
        let long_half = format!("9007199254740993{}", "0".repeat(800));
        let long_above = format!("9007199254740993{}1", "0".repeat(800));
        let tiny = format!("0.{}1e70001", "0".repeat(70000));
        for s in [
            "0",
            "-0",
            "+0",
            "0.0",
            ".5",
            "5.",
            ".",
            "",
            "+",
            "-",
            "e5",
            "1e",
            "1e+",
            "1e-5",
            "1E5",
            "1.e5",
            ".e5",
            "1.5.5",
            " 1",
            "1 ",
            "1_0",
            "0x10",
            "inf",
            "-INF",
            "+Infinity",
            "infinit",
            "nan",
            "NaN",
            "-nan",
            "infx",
            "9007199254740992",
            "9007199254740993",
            "9007199254740995",
            "9007199254740993.0000000000000000001",
            "2.2250738585072011e-308",
            "2.2250738585072014e-308",
            "4.9406564584124654e-324",
            "2.4703282292062327e-324",
            "2.4703282292062328e-324",
            "2.47032822920623272e-324",
            "1e-324",
            "1e-325",
            "3e-324",
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1.7976931348623159e308",
            "1e308",
            "1e309",
            "1e-400",
            "1e400",
            "0.00012",
            "0.1",
            "0.3",
            "1000",
            "1000.0000000000000113686837721616029",
            "1000.00000000000001136868377216160297",
            "123456789012345678901234567890",
            "0.000000000000000000000000000000001",
            "1e65536",
            "1e655359999",
            "0e99999999",
            "00000000000000000000.00000000000000000001e20",
            &long_half,
            &long_above,
            &tiny,
        ] {
            same(s);
        }
    }

    /// The sum of two non-negative decimals written with the same number of decimal places.
    fn add_fixed(a: &str, b: &str) -> String {
        let width = a.len().max(b.len());
        let (a, b) = (format!("{a:0>width$}"), format!("{b:0>width$}"));
        let mut out = Vec::new();
        let mut carry = 0;
        for (x, y) in a.bytes().rev().zip(b.bytes().rev()) {
            if x == b'.' {
                out.push(b'.');
                continue;
            }
            let d = (x - b'0') + (y - b'0') + carry;
            out.push(b'0' + d % 10);
            carry = d / 10;
        }
        if carry > 0 {
            out.push(b'1');
        }
        out.reverse();
        out.into_iter().map(char::from).collect()
    }

    proptest! {
        #[test]
        fn any_decimal_reads_as_the_standard_parser_reads_it(
            sign in "[-+]?", int in "[0-9]{0,30}", frac in proptest::option::of("[0-9]{0,30}"),
            exp in proptest::option::of("[eE][-+]?[0-9]{1,4}"),
        ) {
            let s = format!("{sign}{int}{}{}", frac.map(|f| format!(".{f}")).unwrap_or_default(), exp.unwrap_or_default());
            same(&s);
        }

        #[test]
        fn any_text_is_refused_or_read_as_the_standard_parser_does(s in "[-+.eE0-9a-zA-Z ]{0,12}") {
            same(&s);
        }

        #[test]
        fn a_halfway_point_rounds_to_even_and_a_hair_above_it_up(bits in 0x0360_0000_0000_0000u64..0x7fe0_0000_0000_0000) {
            // the exact decimal of v + ulp/2, and of a little more
            let v = f64::from_bits(bits);
            let half = f64::from_bits(((bits >> 52) - 53) << 52);
            let mid = add_fixed(&format!("{v:.1100}"), &format!("{half:.1100}"));
            same(&mid);
            same(&format!("{mid}0001"));
            same(&format!("-{mid}"));
        }

        #[test]
        fn any_double_written_out_reads_back(bits in any::<u64>()) {
            let v = f64::from_bits(bits);
            same(&format!("{v:e}"));
            same(&format!("{v}"));
            same(&format!("{v:.30e}"));
        }
    }
}
