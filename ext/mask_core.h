/* RFC 6455 masking (section 5.3): XOR with a 4-byte key, at memory speed.
 *
 * Shared by ext/mask.pyx and ext/frames.pyx so the loop exists once. The key
 * is widened to 8 and 16 bytes and the payload is processed in 16-byte
 * vectors (SSE2 on x86-64, NEON on arm64, plain 64-bit words elsewhere), then
 * 8-byte words, then a byte tail. Every access is bounded by ``n``: the
 * Cython callers compile with bounds checking off.
 */
#ifndef WS4REDIS_MASK_CORE_H
#define WS4REDIS_MASK_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The key length the loops below are built for; ext/mask.pyx checks at
 * import that it is ws4redis.constants.MASK_KEY_LENGTH. */
#define WS_MASK_KEY_LENGTH 4

/* Vector types are a GCC/clang extension; other compilers (MSVC), and WS4REDIS_PORTABLE_C, take
 * the 8-byte word loop. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(WS4REDIS_PORTABLE_C)
#define WS_HAVE_VECTORS 1
typedef uint64_t ws_u64x2 __attribute__((vector_size(16)));
#endif

static inline void ws_mask_word(unsigned char *dst, const unsigned char *src, uint64_t k64)
{
    uint64_t w;
    memcpy(&w, src, 8);
    w ^= k64;
    memcpy(dst, &w, 8);
}

/* dst[i] = src[i] ^ key[(phase + i) % 4] for i < n. dst may equal src (in
 * place) but the two must not otherwise overlap. */
static inline void ws_mask(unsigned char *dst, const unsigned char *src, size_t n,
                           const unsigned char *key, size_t phase)
{
    unsigned char k[8];
    uint64_t k64;
    uint32_t k32;
    size_t i = 0;
    for (int j = 0; j < 8; j++)
        k[j] = key[(phase + (size_t)j) % WS_MASK_KEY_LENGTH];
    memcpy(&k64, k, 8);
    memcpy(&k32, k, 4);
#ifdef WS_HAVE_VECTORS
    if (n >= 16) {
        ws_u64x2 kv = {k64, k64};
        for (; n - i >= 64; i += 64) {
            ws_u64x2 a, b, c, d;
            memcpy(&a, src + i, 16);
            memcpy(&b, src + i + 16, 16);
            memcpy(&c, src + i + 32, 16);
            memcpy(&d, src + i + 48, 16);
            a ^= kv;
            b ^= kv;
            c ^= kv;
            d ^= kv;
            memcpy(dst + i, &a, 16);
            memcpy(dst + i + 16, &b, 16);
            memcpy(dst + i + 32, &c, 16);
            memcpy(dst + i + 48, &d, 16);
        }
        for (; n - i >= 16; i += 16) {
            ws_u64x2 a;
            memcpy(&a, src + i, 16);
            a ^= kv;
            memcpy(dst + i, &a, 16);
        }
    }
    /* Fewer than 16 bytes left: at most one word, no loop. */
    if (n - i >= 8) {
        ws_mask_word(dst + i, src + i, k64);
        i += 8;
    }
#else
    for (; n - i >= 8; i += 8)
        ws_mask_word(dst + i, src + i, k64);
#endif
    if (n - i >= 4) {
        uint32_t w;
        memcpy(&w, src + i, 4);
        w ^= k32;
        memcpy(dst + i, &w, 4);
        i += 4;
    }
    /* i is a multiple of 4 here, so k[i % 4] keeps the key phase. */
    for (; i < n; i++)
        dst[i] = src[i] ^ k[i % WS_MASK_KEY_LENGTH];
}

#endif
