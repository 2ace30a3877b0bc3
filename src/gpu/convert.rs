//! Host-side number formats: scalar arguments packed as kernel parameters, half and bfloat16
//! conversions (for synthetic inputs and for reading outputs back), device bytes as f64.

use crate::spec::ElemType;

/// The bytes of a scalar argument's value, packed in a u64. Inline for the integer types (on
/// the launch hit path, whose code is kept in one stretch); the float conversions are out of
/// line.
#[inline]
pub fn scalar_bits(ty: ElemType, v: i64) -> u64 {
    match ty {
        ElemType::I32 => v as i32 as u32 as u64,
        ElemType::U32 => v as u32 as u64,
        ElemType::I64 => v as u64,
        ElemType::U8 => v as u8 as u64,
        _ => float_bits(ty, v),
    }
}

/// [`scalar_bits`] of the float types.
#[inline(never)]
fn float_bits(ty: ElemType, v: i64) -> u64 {
    match ty {
        ElemType::F32 => (v as f32).to_bits() as u64,
        ElemType::F64 => (v as f64).to_bits(),
        ElemType::F16 => f32_to_f16(v as f32) as u64,
        ElemType::Bf16 => f32_to_bf16(v as f32) as u64,
        ElemType::I32 | ElemType::U32 | ElemType::I64 | ElemType::U8 => scalar_bits(ty, v),
    }
}

/// IEEE half from f32, round to nearest even.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rounded = (m + half - 1 + ((m >> shift) & 1)) >> shift;
        return sign | rounded as u16;
    }
    let rounded = man + 0xfff + ((man >> 13) & 1);
    let (e, m) = if rounded & 0x80_0000 != 0 {
        (e + 1, 0)
    } else {
        (e, rounded >> 13)
    };
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    sign | ((e as u16) << 10) | m as u16
}

/// f32 from IEEE half.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 from f32, round to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// Host bytes of a buffer as f64 values (for comparison).
pub fn to_f64(ty: ElemType, bytes: &[u8]) -> Vec<f64> {
    let chunks = bytes.chunks_exact(ty.size());
    match ty {
        ElemType::F32 => chunks
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::F64 => chunks
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        ElemType::F16 => chunks
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64)
            .collect(),
        ElemType::Bf16 => chunks
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
            .collect(),
        ElemType::I32 => chunks
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::U32 => chunks
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        ElemType::I64 => chunks
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64)
            .collect(),
        ElemType::U8 => bytes.iter().map(|b| *b as f64).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_trip() {
        for x in [0.0f32, 1.0, -2.5, 0.333, 65504.0, 1e-5, -1e-7, 3.0e5] {
            let h = f32_to_f16(x);
            let back = f16_to_f32(h);
            if x.abs() > 65504.0 {
                assert!(back.is_infinite());
            } else {
                assert!((back - x).abs() <= x.abs() * 1e-3 + 6e-8, "{x} -> {back}");
            }
        }
        assert!(f16_to_f32(0xFFFF).is_nan());
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
    }
}
