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
 *
 * Shared by ext/utf8.pyx and ext/frames.pyx. Every read is bounded by ``n``.
 */
#ifndef WS4REDIS_UTF8_CORE_H
#define WS4REDIS_UTF8_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define WS_ALWAYS_INLINE __attribute__((always_inline))
#define WS_UNUSED __attribute__((unused))
#else
#define WS_ALWAYS_INLINE
#define WS_UNUSED
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define WS_UTF8_BMI2 1
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

/* Fill the packed table and pick the scanner for this processor; called once
 * at module import (idempotent). */
static inline void ws_utf8_init(void)
{
    for (unsigned int byte = 0; byte < 256; byte++) {
        uint64_t row = 0;
        for (int state = 0; state < WS_UTF8_STATES; state++)
            row |= (uint64_t)(ws_utf8_next(state, byte) * WS_UTF8_BITS) << (state * WS_UTF8_BITS);
        ws_utf8_rows[byte] = row;
    }
    ws_utf8_scan_impl = ws_utf8_scan_base;
#ifdef WS_UTF8_BMI2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("bmi2"))
        ws_utf8_scan_impl = ws_utf8_scan_bmi2;
#endif
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
