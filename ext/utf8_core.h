/* UTF-8 validation (RFC 3629) for RFC 6455 text, fail-fast and allocation-free.
 *
 * A deterministic automaton with nine states decides validity byte by byte;
 * the first byte that drives it into the REJECT state is the "first byte that
 * cannot belong to valid UTF-8", which is what Autobahn-style validators
 * report. Two tricks make it fast:
 *
 * - "shift DFA": each state is a bit offset (a multiple of 6) and the table
 *   row of a byte packs the next state of every current state, so a step is
 *   one table load plus one shift, ``s = row[byte] >> (s & 63)``, with no
 *   branch. REJECT maps to itself, so a whole block can be run and checked
 *   once at its end; only a failing block is rescanned to find the index.
 * - ASCII skip: while the automaton sits between sequences, 32 bytes at a time
 *   are tested for the high bit and skipped.
 * - two interleaved halves for non-ASCII text (see ws_utf8_scan_generic) and
 *   a BMI2 build picked at run time on x86-64.
 * - on x86-64 processors with AVX2 (AVX-512BW), long runs of text are checked 32 (64)
 *   bytes per step with the lookup algorithm of Keiser and Lemire ("Validating UTF-8 In
 *   Less Than One Instruction Per Byte", Software: Practice and Experience,
 *   2021): three 16-entry table lookups classify every byte pair, and two
 *   shifted copies of the input check the lengths of 3- and 4-byte sequences
 *   (see ws_utf8_scan_simd). The automaton keeps the state between calls and
 *   finds the exact index of a bad byte.
 *
 * Shared by ext/utf8.pyx and ext/frames.pyx. Every read is bounded by ``n``.
 */
#ifndef WS4REDIS_UTF8_CORE_H
#define WS4REDIS_UTF8_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* GCC and clang get attributes, vector types and the x86-64 SIMD scanners; every other compiler
 * (MSVC) gets standard C. WS4REDIS_PORTABLE_C forces the standard-C paths under GCC or clang too,
 * so the test suite builds and checks what MSVC compiles (tests/test_compilers.py). */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(WS4REDIS_PORTABLE_C)
#define WS_GNU_C 1
#endif

#ifdef WS_GNU_C
#define WS_ALWAYS_INLINE __attribute__((always_inline))
#define WS_UNUSED __attribute__((unused))
#else
#define WS_ALWAYS_INLINE
#define WS_UNUSED
#endif

#if defined(__x86_64__) && defined(WS_GNU_C)
#define WS_UTF8_BMI2 1
#define WS_UTF8_AVX2 1
#include <immintrin.h>
#endif

#define WS_UTF8_BITS 6
#define WS_UTF8_STATE_MASK 63
/* States, in units of WS_UTF8_BITS. */
enum {
    WS_UTF8_ACCEPT = 0,  /* between sequences */
    WS_UTF8_REJECT = 1,  /* invalid, sticky */
    WS_UTF8_NEED1 = 2,   /* one more 80..BF */
    WS_UTF8_NEED2 = 3,   /* two more 80..BF */
    WS_UTF8_AFTER_E0 = 4, /* A0..BF then one more: no overlong 3-byte form */
    WS_UTF8_AFTER_ED = 5, /* 80..9F then one more: no surrogate */
    WS_UTF8_NEED3 = 6,   /* three more 80..BF */
    WS_UTF8_AFTER_F0 = 7, /* 90..BF then two more: no overlong 4-byte form */
    WS_UTF8_AFTER_F4 = 8, /* 80..8F then two more: nothing above U+10FFFF */
    WS_UTF8_STATES = 9
};

#define WS_UTF8_ACCEPT_BITS ((uint64_t)WS_UTF8_ACCEPT * WS_UTF8_BITS)
#define WS_UTF8_REJECT_BITS ((uint64_t)WS_UTF8_REJECT * WS_UTF8_BITS)
#define WS_ASCII_HIGH_BITS 0x8080808080808080ULL

static uint64_t ws_utf8_rows[256];

/* The transition of RFC 3629, section 4, for one state and one byte. */
static inline int ws_utf8_next(int state, unsigned int byte)
{
    switch (state) {
    case WS_UTF8_ACCEPT:
        if (byte < 0x80) return WS_UTF8_ACCEPT;
        if (byte >= 0xC2 && byte <= 0xDF) return WS_UTF8_NEED1;
        if (byte == 0xE0) return WS_UTF8_AFTER_E0;
        if (byte == 0xED) return WS_UTF8_AFTER_ED;
        if (byte >= 0xE1 && byte <= 0xEF) return WS_UTF8_NEED2;
        if (byte == 0xF0) return WS_UTF8_AFTER_F0;
        if (byte >= 0xF1 && byte <= 0xF3) return WS_UTF8_NEED3;
        if (byte == 0xF4) return WS_UTF8_AFTER_F4;
        return WS_UTF8_REJECT;
    case WS_UTF8_NEED1:
        return (byte >= 0x80 && byte <= 0xBF) ? WS_UTF8_ACCEPT : WS_UTF8_REJECT;
    case WS_UTF8_NEED2:
        return (byte >= 0x80 && byte <= 0xBF) ? WS_UTF8_NEED1 : WS_UTF8_REJECT;
    case WS_UTF8_AFTER_E0:
        return (byte >= 0xA0 && byte <= 0xBF) ? WS_UTF8_NEED1 : WS_UTF8_REJECT;
    case WS_UTF8_AFTER_ED:
        return (byte >= 0x80 && byte <= 0x9F) ? WS_UTF8_NEED1 : WS_UTF8_REJECT;
    case WS_UTF8_NEED3:
        return (byte >= 0x80 && byte <= 0xBF) ? WS_UTF8_NEED2 : WS_UTF8_REJECT;
    case WS_UTF8_AFTER_F0:
        return (byte >= 0x90 && byte <= 0xBF) ? WS_UTF8_NEED2 : WS_UTF8_REJECT;
    case WS_UTF8_AFTER_F4:
        return (byte >= 0x80 && byte <= 0x8F) ? WS_UTF8_NEED2 : WS_UTF8_REJECT;
    default:
        return WS_UTF8_REJECT;
    }
}

static size_t (*ws_utf8_scan_impl)(uint64_t *, const unsigned char *, size_t);
static size_t ws_utf8_scan_base(uint64_t *state, const unsigned char *p, size_t n);
#ifdef WS_UTF8_BMI2
static size_t ws_utf8_scan_bmi2(uint64_t *state, const unsigned char *p, size_t n);
#endif
#ifdef WS_UTF8_AVX2
static size_t ws_utf8_scan_avx2(uint64_t *state, const unsigned char *p, size_t n);
static size_t ws_utf8_scan_avx512(uint64_t *state, const unsigned char *p, size_t n);
#endif

/* The scanners, slowest first: ws_utf8_select picks one by index. */
enum {
    WS_UTF8_IMPL_BASE = 0,
    WS_UTF8_IMPL_BMI2 = 1,
    WS_UTF8_IMPL_AVX2 = 2,
    WS_UTF8_IMPL_AVX512 = 3,
    WS_UTF8_IMPLS = 4
};
static const char *const ws_utf8_impl_names[WS_UTF8_IMPLS] = {"base", "bmi2", "avx2", "avx512"};
static int ws_utf8_impl = WS_UTF8_IMPL_BASE;

/* Whether this processor (and build) can run scanner ``impl``. */
static inline int ws_utf8_supported(int impl)
{
    switch (impl) {
    case WS_UTF8_IMPL_BASE:
        return 1;
#ifdef WS_UTF8_BMI2
    case WS_UTF8_IMPL_BMI2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("bmi2");
#endif
#ifdef WS_UTF8_AVX2
    case WS_UTF8_IMPL_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
    case WS_UTF8_IMPL_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
#endif
    default:
        return 0;
    }
}

/* Use scanner ``impl`` from now on; 0 (and no change) when this processor cannot run it. */
static inline int ws_utf8_select(int impl)
{
    if (impl < 0 || impl >= WS_UTF8_IMPLS || !ws_utf8_supported(impl))
        return 0;
    switch (impl) {
#ifdef WS_UTF8_BMI2
    case WS_UTF8_IMPL_BMI2:
        ws_utf8_scan_impl = ws_utf8_scan_bmi2;
        break;
#endif
#ifdef WS_UTF8_AVX2
    case WS_UTF8_IMPL_AVX2:
        ws_utf8_scan_impl = ws_utf8_scan_avx2;
        break;
    case WS_UTF8_IMPL_AVX512:
        ws_utf8_scan_impl = ws_utf8_scan_avx512;
        break;
#endif
    default:
        ws_utf8_scan_impl = ws_utf8_scan_base;
    }
    ws_utf8_impl = impl;
    return 1;
}

/* Fill the packed table and pick the fastest scanner this processor runs; called once
 * at module import (idempotent). */
static inline void ws_utf8_init(void)
{
    for (unsigned int byte = 0; byte < 256; byte++) {
        uint64_t row = 0;
        for (int state = 0; state < WS_UTF8_STATES; state++)
            row |= (uint64_t)(ws_utf8_next(state, byte) * WS_UTF8_BITS) << (state * WS_UTF8_BITS);
        ws_utf8_rows[byte] = row;
    }
    for (int impl = WS_UTF8_IMPLS - 1; impl >= 0; impl--)
        if (ws_utf8_select(impl))
            break;
}

static inline uint64_t ws_utf8_step(uint64_t state, unsigned char byte)
{
    return ws_utf8_rows[byte] >> (state & WS_UTF8_STATE_MASK);
}

static inline int ws_utf8_accepting(uint64_t state)
{
    return (state & WS_UTF8_STATE_MASK) == WS_UTF8_ACCEPT_BITS;
}

static inline int ws_utf8_rejected(uint64_t state)
{
    return (state & WS_UTF8_STATE_MASK) == WS_UTF8_REJECT_BITS;
}

#define WS_UTF8_BLOCK 16
#define WS_UTF8_HALF 64

static inline int ws_utf8_continuation(unsigned char byte)
{
    return (byte & 0xC0) == 0x80;
}

/* Run the automaton sequentially over p[i:end] from *state. Returns the index
 * of the first rejected byte, or end. */
static inline size_t ws_utf8_run(uint64_t *state, const unsigned char *p, size_t i, size_t end)
{
    uint64_t s = *state;
    for (; i < end; i++) {
        s = ws_utf8_step(s, p[i]);
        if (ws_utf8_rejected(s))
            break;
    }
    *state = s;
    return i;
}

/* ws_utf8_scan: advance *state over p[0:n]. When a byte is rejected, *state
 * becomes REJECT and its index is returned; otherwise n is returned. Callers
 * tell the two apart with ws_utf8_rejected(*state): a state that is already
 * REJECT stays so and reports index 0, even for n == 0.
 *
 * Non-ASCII text is checked 128 bytes at a time as two independent halves
 * whose steps interleave, so the processor overlaps their dependency chains:
 * the second half starts on a sequence boundary (a byte that is not a
 * continuation byte) in the ACCEPT state, and the first half is valid only if
 * it ends in ACCEPT exactly there. Any doubt (an error in either half, or no
 * boundary within 3 bytes) sends the window through the sequential automaton,
 * which also finds the exact index of the first bad byte. */
static inline WS_ALWAYS_INLINE size_t ws_utf8_scan_generic(uint64_t *state, const unsigned char *p,
                                                            size_t n)
{
    uint64_t s = *state;
    size_t i = 0;
    if (ws_utf8_rejected(s))
        return 0;
    while (i < n) {
        if (ws_utf8_accepting(s)) {
            while (n - i >= 2 * WS_UTF8_BLOCK) {
                uint64_t a, b, c, d;
                memcpy(&a, p + i, 8);
                memcpy(&b, p + i + 8, 8);
                memcpy(&c, p + i + 16, 8);
                memcpy(&d, p + i + 24, 8);
                if ((a | b | c | d) & WS_ASCII_HIGH_BITS)
                    break;
                i += 2 * WS_UTF8_BLOCK;
            }
            while (n - i >= 8) {
                uint64_t a;
                memcpy(&a, p + i, 8);
                if (a & WS_ASCII_HIGH_BITS)
                    break;
                i += 8;
            }
            if (i == n)
                break;
        }
        if (n - i >= 2 * WS_UTF8_HALF) {
            size_t end = i + 2 * WS_UTF8_HALF;
            size_t mid = i + WS_UTF8_HALF;
            size_t limit = mid + 3;
            uint64_t first = s, second = WS_UTF8_ACCEPT_BITS;
            size_t k, common;
            while (mid < limit && ws_utf8_continuation(p[mid]))
                mid++;
            common = end - mid;
            {
                const unsigned char *pa = p + i, *pb = p + mid;
                for (k = 0; k + 4 <= common; k += 4) {
                    first = ws_utf8_step(first, pa[k]);
                    second = ws_utf8_step(second, pb[k]);
                    first = ws_utf8_step(first, pa[k + 1]);
                    second = ws_utf8_step(second, pb[k + 1]);
                    first = ws_utf8_step(first, pa[k + 2]);
                    second = ws_utf8_step(second, pb[k + 2]);
                    first = ws_utf8_step(first, pa[k + 3]);
                    second = ws_utf8_step(second, pb[k + 3]);
                }
                for (; k < common; k++) {
                    first = ws_utf8_step(first, pa[k]);
                    second = ws_utf8_step(second, pb[k]);
                }
                for (k = i + common; k < mid; k++)
                    first = ws_utf8_step(first, p[k]);
            }
            if (ws_utf8_accepting(first) && !ws_utf8_rejected(second)) {
                s = second;
                i = end;
                continue;
            }
            i = ws_utf8_run(&s, p, i, end);
        } else {
            size_t end = (n - i > WS_UTF8_BLOCK) ? i + WS_UTF8_BLOCK : n;
            i = ws_utf8_run(&s, p, i, end);
        }
        if (ws_utf8_rejected(s)) {
            *state = WS_UTF8_REJECT_BITS;
            return i;
        }
    }
    *state = s;
    return n;
}

/* The loop is bound by instruction throughput, and a variable shift is one
 * instruction with BMI2 (shrx) but three without: on x86-64 a BMI2 build of
 * the same code is selected at import when the processor has it, which makes
 * non-ASCII text about 1.6 times faster. */
WS_UNUSED static size_t ws_utf8_scan_base(uint64_t *state, const unsigned char *p, size_t n)
{
    return ws_utf8_scan_generic(state, p, n);
}

#ifdef WS_UTF8_BMI2
__attribute__((target("bmi2"))) WS_UNUSED static size_t ws_utf8_scan_bmi2(uint64_t *state,
                                                                            const unsigned char *p, size_t n)
{
    return ws_utf8_scan_generic(state, p, n);
}
#endif

#ifdef WS_UTF8_AVX2
/* Keiser-Lemire error bits: what a pair (previous byte, byte) can violate. */
#define WS_TOO_SHORT (1 << 0)      /* 11______ 0_______ or 11______ 11______ */
#define WS_TOO_LONG (1 << 1)       /* 0_______ 10______ */
#define WS_OVERLONG_3 (1 << 2)     /* 11100000 100_____ */
#define WS_TOO_LARGE (1 << 3)      /* 11110100 1001____, 11110100 101_____, 11110101.. 1001____ .. */
#define WS_SURROGATE (1 << 4)      /* 11101101 101_____ */
#define WS_OVERLONG_2 (1 << 5)     /* 1100000_ 10______ */
#define WS_TOO_LARGE_1000 (1 << 6) /* 11110101 1000____, 1111011_ 1000____, 11111___ 1000____ */
#define WS_OVERLONG_4 (1 << 6)     /* 11110000 1000____ */
#define WS_TWO_CONTS (1 << 7)      /* 10______ 10______ */
#define WS_CARRY (WS_TOO_SHORT | WS_TOO_LONG | WS_TWO_CONTS)

#define WS_UTF8_REGION 1024 /* bytes checked before the automaton takes over again */

/* The three lookup tables of the algorithm, indexed by a nibble: the high nibble of the previous
 * byte, its low nibble, the high nibble of the byte. Each vector width broadcasts them to its
 * 16-byte lanes. */
static const unsigned char ws_utf8_byte_1_high[16] = {
    WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG, WS_TOO_LONG,
    WS_TWO_CONTS, WS_TWO_CONTS, WS_TWO_CONTS, WS_TWO_CONTS,
    WS_TOO_SHORT | WS_OVERLONG_2, WS_TOO_SHORT, WS_TOO_SHORT | WS_OVERLONG_3 | WS_SURROGATE,
    WS_TOO_SHORT | WS_TOO_LARGE | WS_TOO_LARGE_1000 | WS_OVERLONG_4};
static const unsigned char ws_utf8_byte_1_low[16] = {
    WS_CARRY | WS_OVERLONG_3 | WS_OVERLONG_2 | WS_OVERLONG_4, WS_CARRY | WS_OVERLONG_2, WS_CARRY, WS_CARRY,
    WS_CARRY | WS_TOO_LARGE, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000,
    WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000,
    WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000,
    WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000,
    WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000 | WS_SURROGATE,
    WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000, WS_CARRY | WS_TOO_LARGE | WS_TOO_LARGE_1000};
static const unsigned char ws_utf8_byte_2_high[16] = {
    WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT,
    WS_TOO_SHORT,
    WS_TOO_LONG | WS_OVERLONG_2 | WS_TWO_CONTS | WS_OVERLONG_3 | WS_TOO_LARGE_1000 | WS_OVERLONG_4,
    WS_TOO_LONG | WS_OVERLONG_2 | WS_TWO_CONTS | WS_OVERLONG_3 | WS_TOO_LARGE,
    WS_TOO_LONG | WS_OVERLONG_2 | WS_TWO_CONTS | WS_SURROGATE | WS_TOO_LARGE,
    WS_TOO_LONG | WS_OVERLONG_2 | WS_TWO_CONTS | WS_SURROGATE | WS_TOO_LARGE,
    WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT, WS_TOO_SHORT};

/* The error bits of every byte of ``input`` given the 32 bytes before it (zero: ASCII). */
__attribute__((target("avx2"))) static inline __m256i ws_utf8_chunk_errors(__m256i input, __m256i previous)
{
    const __m256i low_nibble = _mm256_set1_epi8(0x0F);
    /* The input shifted right by 1, 2 and 3 bytes across the 32-byte boundary. */
    __m256i joined = _mm256_permute2x128_si256(previous, input, 0x21);
    __m256i prev1 = _mm256_alignr_epi8(input, joined, 15);
    __m256i prev2 = _mm256_alignr_epi8(input, joined, 14);
    __m256i prev3 = _mm256_alignr_epi8(input, joined, 13);

    __m256i byte_1_high = _mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)ws_utf8_byte_1_high)),
        _mm256_and_si256(_mm256_srli_epi16(prev1, 4), low_nibble));
    __m256i byte_1_low = _mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)ws_utf8_byte_1_low)),
        _mm256_and_si256(prev1, low_nibble));
    __m256i byte_2_high = _mm256_shuffle_epi8(
        _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)ws_utf8_byte_2_high)),
        _mm256_and_si256(_mm256_srli_epi16(input, 4), low_nibble));
    __m256i special = _mm256_and_si256(_mm256_and_si256(byte_1_high, byte_1_low), byte_2_high);

    /* A third or fourth byte of a sequence must be a continuation: 0x80 where one is due. */
    __m256i third = _mm256_subs_epu8(prev2, _mm256_set1_epi8((char)(0xE0 - 0x80)));
    __m256i fourth = _mm256_subs_epu8(prev3, _mm256_set1_epi8((char)(0xF0 - 0x80)));
    __m256i due = _mm256_and_si256(_mm256_or_si256(third, fourth), _mm256_set1_epi8((char)0x80));
    return _mm256_xor_si256(due, special);
}

/* The same for 64 bytes, with the 64 bytes before it (AVX-512BW: the lookups work per 16-byte
 * lane as AVX2's, only the shift across lanes differs). */
__attribute__((target("avx512f,avx512bw"))) static inline __m512i ws_utf8_chunk_errors_512(__m512i input,
                                                                                          __m512i previous)
{
    const __m512i low_nibble = _mm512_set1_epi8(0x0F);
    /* Each 16-byte lane of ``joined`` holds the 16 bytes before the same lane of ``input``. */
    __m512i joined = _mm512_alignr_epi64(input, previous, 6);
    __m512i prev1 = _mm512_alignr_epi8(input, joined, 15);
    __m512i prev2 = _mm512_alignr_epi8(input, joined, 14);
    __m512i prev3 = _mm512_alignr_epi8(input, joined, 13);

    __m512i byte_1_high = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)ws_utf8_byte_1_high)),
        _mm512_and_si512(_mm512_srli_epi16(prev1, 4), low_nibble));
    __m512i byte_1_low = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)ws_utf8_byte_1_low)),
        _mm512_and_si512(prev1, low_nibble));
    __m512i byte_2_high = _mm512_shuffle_epi8(
        _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)ws_utf8_byte_2_high)),
        _mm512_and_si512(_mm512_srli_epi16(input, 4), low_nibble));
    __m512i special = _mm512_and_si512(_mm512_and_si512(byte_1_high, byte_1_low), byte_2_high);

    __m512i third = _mm512_subs_epu8(prev2, _mm512_set1_epi8((char)(0xE0 - 0x80)));
    __m512i fourth = _mm512_subs_epu8(prev3, _mm512_set1_epi8((char)(0xF0 - 0x80)));
    __m512i due = _mm512_and_si512(_mm512_or_si512(third, fourth), _mm512_set1_epi8((char)0x80));
    return _mm512_xor_si512(due, special);
}

/* How many bytes the sequence that ``lead`` starts takes (1 for ASCII and stray bytes). */
static inline size_t ws_utf8_sequence_length(unsigned char lead)
{
    if (lead < 0xC0)
        return 1;
    if (lead < 0xE0)
        return 2;
    if (lead < 0xF0)
        return 3;
    return 4;
}

/* The end of the last sequence of p[..end) that is complete (a region found free of errors may
 * stop inside a sequence that goes on past ``end``: the automaton takes that one). */
static inline size_t ws_utf8_complete_end(const unsigned char *p, size_t end)
{
    for (size_t k = 1; k <= 3; k++) {
        unsigned char byte = p[end - k];
        if (!ws_utf8_continuation(byte))
            return ws_utf8_sequence_length(byte) > k ? end - k : end;
    }
    return end;
}

/* Check p[start:end) (whole 32-byte chunks, starting on a sequence boundary); return the end of
 * the last complete sequence in it, or start - 1 (never a valid index) when something is wrong. */
__attribute__((target("avx2"))) static inline size_t ws_utf8_region_avx2(const unsigned char *p, size_t start,
                                                                        size_t end)
{
    __m256i previous = _mm256_setzero_si256();
    __m256i errors = _mm256_setzero_si256();
    for (size_t i = start; i < end; i += 32) {
        __m256i input = _mm256_loadu_si256((const __m256i *)(p + i));
        /* An ASCII chunk can only be wrong by cutting short a sequence of the chunk before. */
        if (_mm256_movemask_epi8(input) != 0 || _mm256_movemask_epi8(previous) != 0)
            errors = _mm256_or_si256(errors, ws_utf8_chunk_errors(input, previous));
        previous = input;
    }
    if (!_mm256_testz_si256(errors, errors))
        return start - 1;
    return ws_utf8_complete_end(p, end);
}

/* ws_utf8_region_avx2 with 64-byte chunks. */
__attribute__((target("avx512f,avx512bw"))) static inline size_t ws_utf8_region_avx512(const unsigned char *p,
                                                                                      size_t start, size_t end)
{
    __m512i previous = _mm512_setzero_si512();
    __m512i errors = _mm512_setzero_si512();
    for (size_t i = start; i < end; i += 64) {
        __m512i input = _mm512_loadu_si512((const void *)(p + i));
        if (_mm512_movepi8_mask(input) != 0 || _mm512_movepi8_mask(previous) != 0)
            errors = _mm512_or_si512(errors, ws_utf8_chunk_errors_512(input, previous));
        previous = input;
    }
    if (_mm512_test_epi8_mask(errors, errors) != 0)
        return start - 1;
    return ws_utf8_complete_end(p, end);
}

/* Skip ASCII from ``i``, 64 bytes per step (AVX2) or 128 (AVX-512): the index of the first
 * block with a byte above 0x7F, or where fewer than a block's bytes are left. */
__attribute__((target("avx2"))) static inline size_t ws_utf8_ascii_avx2(const unsigned char *p, size_t i,
                                                                       size_t n)
{
    while (n - i >= 64) {
        __m256i low = _mm256_loadu_si256((const __m256i *)(p + i));
        __m256i high = _mm256_loadu_si256((const __m256i *)(p + i + 32));
        if (_mm256_movemask_epi8(_mm256_or_si256(low, high)) != 0)
            break;
        i += 64;
    }
    return i;
}

__attribute__((target("avx512f,avx512bw"))) static inline size_t ws_utf8_ascii_avx512(const unsigned char *p,
                                                                                     size_t i, size_t n)
{
    while (n - i >= 128) {
        __m512i low = _mm512_loadu_si512((const void *)(p + i));
        __m512i high = _mm512_loadu_si512((const void *)(p + i + 64));
        if (_mm512_movepi8_mask(_mm512_or_si512(low, high)) != 0)
            break;
        i += 128;
    }
    return i;
}

/* The SIMD scanners, given their vector width (``chunk`` bytes), ASCII skip and region check:
 * regions of whole chunks go through ``region`` whenever the automaton is between sequences;
 * short tails, sequences split by a call boundary and any region with an error go through the
 * automaton, which reports the exact index. Inlined into each scanner with its functions. */
static inline WS_ALWAYS_INLINE size_t ws_utf8_scan_simd(uint64_t *state, const unsigned char *p, size_t n,
                                                        size_t chunk,
                                                        size_t (*ascii)(const unsigned char *, size_t, size_t),
                                                        size_t (*region)(const unsigned char *, size_t, size_t))
{
    uint64_t s = *state;
    size_t i = 0;
    if (ws_utf8_rejected(s))
        return 0;
    while (n - i >= 2 * chunk) {
        if (!ws_utf8_accepting(s)) {
            /* A sequence began before: at most 3 bytes finish it. */
            i = ws_utf8_run(&s, p, i, i + 3);
            while (!ws_utf8_accepting(s) && !ws_utf8_rejected(s) && i < n)
                i = ws_utf8_run(&s, p, i, i + 1);
            if (ws_utf8_rejected(s)) {
                *state = WS_UTF8_REJECT_BITS;
                return i;
            }
            continue;
        }
        i = ascii(p, i, n);
        if (n - i < 2 * chunk)
            break;
        size_t length = n - i < WS_UTF8_REGION ? n - i : WS_UTF8_REGION;
        size_t end = i + length - length % chunk;
        size_t checked = region(p, i, end);
        if (checked + 1 == i) {
            /* Something is wrong in p[i:end): the automaton finds where. */
            i = ws_utf8_run(&s, p, i, end);
            if (ws_utf8_rejected(s)) {
                *state = WS_UTF8_REJECT_BITS;
                return i;
            }
            continue;
        }
        i = checked;
    }
    *state = s;
    if (i == n)
        return n;
    return i + ws_utf8_scan_bmi2(state, p + i, n - i);
}

__attribute__((target("avx2,bmi2"))) WS_UNUSED static size_t ws_utf8_scan_avx2(uint64_t *state,
                                                                                 const unsigned char *p, size_t n)
{
    return ws_utf8_scan_simd(state, p, n, 32, ws_utf8_ascii_avx2, ws_utf8_region_avx2);
}

__attribute__((target("avx512f,avx512bw,avx2,bmi2"))) WS_UNUSED static size_t ws_utf8_scan_avx512(
    uint64_t *state, const unsigned char *p, size_t n)
{
    return ws_utf8_scan_simd(state, p, n, 64, ws_utf8_ascii_avx512, ws_utf8_region_avx512);
}
#endif

static size_t (*ws_utf8_scan_impl)(uint64_t *, const unsigned char *, size_t) = ws_utf8_scan_base;

static inline size_t ws_utf8_scan(uint64_t *state, const unsigned char *p, size_t n)
{
    return ws_utf8_scan_impl(state, p, n);
}

/* One-shot: whether p[0:n] is complete, valid UTF-8. */
static inline int ws_utf8_valid(const unsigned char *p, size_t n)
{
    uint64_t s = WS_UTF8_ACCEPT_BITS;
    ws_utf8_scan(&s, p, n);
    return ws_utf8_accepting(s);
}

#endif
