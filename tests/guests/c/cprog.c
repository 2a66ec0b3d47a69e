/*
 * cprog.c -- ox86 guest test: a bare-metal C program (Multiboot kernel via
 * entry.asm) that is ALSO built as a native 32-bit Linux program (-DHOSTED).
 *
 * What it checks: integer work (a sieve, CRC32 and FNV-1a over a generated
 * buffer, 64-bit multiply/divide/modulo through libgcc's __udivdi3/__umoddi3/
 * __divdi3/__moddi3, shifts), a generic quicksort driven by comparator function
 * pointers on pseudo-random data (sortedness, sum preserved), a dispatch table of
 * function pointers, and x87 arithmetic (built with -mfpmath=387 -march=i686:
 * series sums, Newton square roots vs FSQRT, FSIN/FCOS/FPATAN/FYL2X/F2XM1/
 * FSCALE/FPREM/FRNDINT via inline asm, double<->integer conversions), printing
 * 64-bit results in hex and decimal with its own printf-like routine.
 *
 * Output: lines from "cprog start" to a "checksum XXXXXXXX" line (FNV-1a of all
 * preceding output), then PASS/FAIL.  The guest's serial output from the line
 * "cprog start" on must equal the stdout of the native build of this same file
 * (scripts/build-guests builds both; the test compares them).  A few lines
 * ("ok NAME"/"FAIL NAME") are self-checks with architecturally known answers.
 * Guest: exit through port 0xf4 with 0x10 (PASS) / 0x11 (FAIL).
 */
#include <stdarg.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long s64;

#ifdef HOSTED
#include <stdio.h>
static void out_char(int c) { putchar(c); }
#else
extern void guest_putc(int c);
static void out_char(int c) { guest_putc(c); }

void *memset(void *d, int c, unsigned n)
{
    unsigned char *p = d;
    while (n--) *p++ = (unsigned char)c;
    return d;
}
void *memcpy(void *d, const void *s, unsigned n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    while (n--) *p++ = *q++;
    return d;
}
void *memmove(void *d, const void *s, unsigned n)
{
    unsigned char *p = d;
    const unsigned char *q = s;
    if (p < q) { while (n--) *p++ = *q++; }
    else { p += n; q += n; while (n--) *--p = *--q; }
    return d;
}
int memcmp(const void *a, const void *b, unsigned n)
{
    const unsigned char *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p - *q;
    return 0;
}
#endif

/* ------------------------------------------------------------------ output */
static u32 out_hash = 2166136261u;
static int failures;

static void emit(int c)
{
    out_hash = (out_hash ^ (unsigned char)c) * 16777619u;
    out_char(c);
}

static void emit_str(const char *s) { while (*s) emit(*s++); }

static void emit_u64(u64 v, int base, int width, int zero)
{
    char buf[24];
    int n = 0;
    do { int d = (int)(v % (unsigned)base); buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10); v /= (unsigned)base; } while (v);
    while (n < width) buf[n++] = zero ? '0' : ' ';
    while (n) emit(buf[--n]);
}

static u64 dbits(double d)
{
    union { double d; u64 u; } x;
    x.d = d;
    return x.u;
}

/* decimal: sign, integer part, 12 fractional digits (for |d| < 1e15) */
static void emit_double(double d)
{
    emit_str("0x");
    emit_u64(dbits(d), 16, 16, 1);
    emit(' ');
    if (d != d) { emit_str("nan"); return; }
    if (d < 0) { emit('-'); d = -d; }
    if (d >= 1e15) { emit_str("big"); return; }
    u64 ip = (u64)d;
    double frac = d - (double)ip;
    u64 fr = (u64)(frac * 1e12 + 0.5);
    if (fr >= 1000000000000ull) { ip++; fr -= 1000000000000ull; }
    emit_u64(ip, 10, 1, 0);
    emit('.');
    emit_u64(fr, 10, 12, 1);
}

/* %s %c %d %u %x %NNx %lld %llu %llx %0NNllx %g(double) */
static void pf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') { emit(*fmt); continue; }
        fmt++;
        int zero = 0, width = 0, ll = 0;
        if (*fmt == '0') { zero = 1; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        if (*fmt == 'l' && fmt[1] == 'l') { ll = 1; fmt += 2; }
        switch (*fmt) {
        case 's': emit_str(va_arg(ap, const char *)); break;
        case 'c': emit(va_arg(ap, int)); break;
        case 'd': {
            s64 v = ll ? va_arg(ap, s64) : va_arg(ap, int);
            if (v < 0) { emit('-'); v = -v; }
            emit_u64((u64)v, 10, width, zero);
            break;
        }
        case 'u': emit_u64(ll ? va_arg(ap, u64) : va_arg(ap, u32), 10, width, zero); break;
        case 'x': emit_u64(ll ? va_arg(ap, u64) : va_arg(ap, u32), 16, width, zero); break;
        case 'g': emit_double(va_arg(ap, double)); break;
        default: emit('%'); emit(*fmt); break;
        }
    }
    va_end(ap);
}

static void check(const char *name, int ok)
{
    if (ok) pf("ok %s\n", name);
    else { pf("FAIL %s\n", name); failures++; }
}

/* ------------------------------------------------------------------ integer */
static u32 rng_state = 12345;
static u32 rnd(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 1 ^ (rng_state << 15);
}

#define SIEVE_N 200000
static unsigned char composite[SIEVE_N];

static void test_sieve(void)
{
    u32 count = 0, last = 0, sum = 0;
    for (u32 i = 2; i < SIEVE_N; i++) {
        if (composite[i]) continue;
        count++; last = i; sum += i;
        for (u32 j = i * 2; j < SIEVE_N; j += i) composite[j] = 1;
    }
    u32 below100k = 0;
    for (u32 i = 2; i < 100000; i++) below100k += !composite[i];
    pf("sieve n=%u count=%u last=%u sum=%u\n", SIEVE_N, count, last, sum);
    check("sieve_pi_100000_is_9592", below100k == 9592);
}

static u32 crc_table[256];
static u32 crc32(const unsigned char *p, u32 n)
{
    u32 c = 0xffffffffu;
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static unsigned char buf[65536];

static void test_hash(void)
{
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    check("crc32_check_value", crc32((const unsigned char *)"123456789", 9) == 0xcbf43926u);
    for (u32 i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(rnd() >> 7);
    u32 h = 2166136261u;
    for (u32 i = 0; i < sizeof buf; i++) h = (h ^ buf[i]) * 16777619u;
    pf("crc32 buf=%08x\n", crc32(buf, sizeof buf));
    pf("fnv1a buf=%08x\n", h);
}

static void test_u64(void)
{
    u64 acc = 0;
    int ident_ok = 1;
    for (int i = 0; i < 200; i++) {
        u64 a = ((u64)rnd() << 32) | rnd();
        u64 d = ((u64)(rnd() >> (i % 31)) << (i % 17)) | 1;
        u64 q = a / d, r = a % d;
        if (q * d + r != a || r >= d) ident_ok = 0;
        s64 sa = (s64)a, sd = (s64)(d | ((u64)(i & 1) << 63));
        s64 sq = sa / sd, sr = sa % sd;
        if (sq * sd + sr != sa) ident_ok = 0;
        acc = (acc * 0x100000001b3ull) ^ q ^ (r << 7) ^ (u64)sq ^ ((u64)sr >> 3);
        acc ^= (a >> (i % 64)) + (a << (63 - i % 64)) + (u64)((s64)a >> (i % 50));
    }
    u64 m = 0x123456789abcdef0ull * 0xfedcba9876543210ull;
    pf("u64 mul=%016llx acc=%016llx\n", m, acc);
    pf("u64 div=%llu mod=%llu sdiv=%lld smod=%lld\n", 0xfedcba9876543210ull / 1000000007ull,
       0xfedcba9876543210ull % 1000000007ull, (s64)-9876543210123ll / 7777, (s64)-9876543210123ll % 7777);
    check("u64_divmod_identity", ident_ok);
    check("u64_known_quotient", 1000000000000000000ull / 1000000007ull == 999999993ull);
}

/* generic quicksort with a comparator function pointer */
typedef int (*cmp_fn)(const void *, const void *);
static void swap_bytes(unsigned char *a, unsigned char *b, u32 size)
{
    while (size--) { unsigned char t = *a; *a++ = *b; *b++ = t; }
}
static void my_qsort(void *base, u32 n, u32 size, cmp_fn cmp)
{
    unsigned char *b = base;
    while (n > 1) {
        u32 mid = n / 2;
        swap_bytes(b, b + mid * size, size);
        u32 last = 0;
        for (u32 i = 1; i < n; i++)
            if (cmp(b + i * size, b) < 0) { last++; swap_bytes(b + last * size, b + i * size, size); }
        swap_bytes(b, b + last * size, size);
        if (last < n - last - 1) { my_qsort(b, last, size, cmp); b += (last + 1) * size; n -= last + 1; }
        else { my_qsort(b + (last + 1) * size, n - last - 1, size, cmp); n = last; }
    }
}
static int cmp_asc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}
static int cmp_desc(const void *a, const void *b) { return cmp_asc(b, a); }
struct rec { u32 key; u32 val; };
static int cmp_rec(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

#define NSORT 5000
static int arr[NSORT];
static struct rec recs[1000];

static void test_sort(void)
{
    u32 sum0 = 0, sum1 = 0;
    for (int i = 0; i < NSORT; i++) { arr[i] = (int)rnd() % 100000; sum0 += (u32)arr[i]; }
    my_qsort(arr, NSORT, sizeof arr[0], cmp_asc);
    int sorted = 1;
    for (int i = 0; i < NSORT; i++) { sum1 += (u32)arr[i]; if (i && arr[i - 1] > arr[i]) sorted = 0; }
    check("qsort_ascending_sorted", sorted && sum0 == sum1);
    pf("qsort asc min=%d med=%d max=%d\n", arr[0], arr[NSORT / 2], arr[NSORT - 1]);
    my_qsort(arr, NSORT, sizeof arr[0], cmp_desc);
    sorted = 1;
    for (int i = 1; i < NSORT; i++) if (arr[i - 1] < arr[i]) sorted = 0;
    check("qsort_descending_sorted", sorted);
    for (int i = 0; i < 1000; i++) { recs[i].key = rnd() % 997; recs[i].val = (u32)i; }
    my_qsort(recs, 1000, sizeof recs[0], cmp_rec);
    u32 h = 0;
    sorted = 1;
    for (int i = 0; i < 1000; i++) { h = h * 31 + recs[i].key * 7 + recs[i].val; if (i && recs[i - 1].key > recs[i].key) sorted = 0; }
    check("qsort_struct_sorted", sorted);
    pf("qsort struct hash=%08x\n", h);
}

/* dispatch table */
static u32 op_add(u32 a, u32 b) { return a + b; }
static u32 op_sub(u32 a, u32 b) { return a - b; }
static u32 op_mul(u32 a, u32 b) { return a * b; }
static u32 op_xor(u32 a, u32 b) { return a ^ b; }
static u32 op_rol(u32 a, u32 b) { b &= 31; return b ? (a << b) | (a >> (32 - b)) : a; }
static u32 op_div(u32 a, u32 b) { return a / (b | 1); }
static u32 (*const ops[])(u32, u32) = { op_add, op_sub, op_mul, op_xor, op_rol, op_div };

static void test_dispatch(void)
{
    u32 v = 0x9e3779b9u, counts[6] = {0};
    for (int i = 0; i < 10000; i++) {
        u32 r = rnd();
        u32 k = r % 6;
        counts[k]++;
        v = ops[k](v, r >> 3) + (u32)i;
    }
    pf("dispatch v=%08x counts=%u,%u,%u,%u,%u,%u\n", v, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]);
    check("dispatch_counts_total", counts[0] + counts[1] + counts[2] + counts[3] + counts[4] + counts[5] == 10000);
}

/* ------------------------------------------------------------------ x87 */
/* The asm leaves an 80-bit value in st(0) that GCC believes is a double; store
 * it through a volatile double so it is rounded the same way everywhere. */
static double rnd80(double r) { volatile double v = r; return v; }
static double x_sqrt(double x) { double r; __asm__("fsqrt" : "=t"(r) : "0"(x)); return rnd80(r); }
static double x_sin(double x) { double r; __asm__("fsin" : "=t"(r) : "0"(x)); return rnd80(r); }
static double x_cos(double x) { double r; __asm__("fcos" : "=t"(r) : "0"(x)); return rnd80(r); }
static double x_atan2(double y, double x) { double r; __asm__("fpatan" : "=t"(r) : "0"(x), "u"(y) : "st(1)"); return rnd80(r); }
static double x_ylog2x(double y, double x) { double r; __asm__("fyl2x" : "=t"(r) : "0"(x), "u"(y) : "st(1)"); return rnd80(r); }
static double x_2xm1(double x) { double r; __asm__("f2xm1" : "=t"(r) : "0"(x)); return rnd80(r); }
static double x_scale(double x, double e) { double r; __asm__("fscale" : "=t"(r) : "0"(x), "u"(e)); return rnd80(r); }
static double x_prem(double x, double y) { double r; __asm__("1: fprem; fnstsw %%ax; testb $4, %%ah; jnz 1b" : "=t"(r) : "0"(x), "u"(y) : "ax", "cc"); return rnd80(r); }
static double x_rndint(double x) { double r; __asm__("frndint" : "=t"(r) : "0"(x)); return rnd80(r); }
static double x_pi(void) { double r; __asm__("fldpi" : "=t"(r)); return rnd80(r); }
static double x_l2e(void) { double r; __asm__("fldl2e" : "=t"(r)); return rnd80(r); }

static double newton_sqrt(double a)
{
    double x = a > 1 ? a / 2 : 1;
    for (int i = 0; i < 60; i++) {
        double nx = 0.5 * (x + a / x);
        if (nx == x) break;
        x = nx;
    }
    return x;
}

static void test_x87(void)
{
    double s = 0;
    for (int k = 1; k <= 1000; k++) s += 1.0 / ((double)k * k);
    pf("basel1000 %g\n", s);
    double l = 0;
    for (int k = 0; k < 100000; k++) l += (k & 1 ? -4.0 : 4.0) / (2 * k + 1);
    pf("leibniz %g\n", l);
    double e = 1, t = 1;
    for (int k = 1; k < 20; k++) { t /= k; e += t; }
    pf("e_series %g\n", e);
    double h = 0;
    for (int k = 1; k <= 5000; k++) h += 1.0 / k - 0.5 / (k + 0.25);
    pf("mixed_series %g\n", h);

    static const double vals[] = { 2.0, 10.0, 0.5, 12345.678, 1e-3, 7e10 };
    int sqrt_ok = 1;
    for (unsigned i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        double a = newton_sqrt(vals[i]), b = x_sqrt(vals[i]);
        pf("sqrt(%g) newton=%g fsqrt=%g\n", vals[i], a, b);
        double d = a > b ? a - b : b - a;
        if (d > b * 4e-16) sqrt_ok = 0;
    }
    check("newton_sqrt_matches_fsqrt", sqrt_ok);
    check("fsqrt_exact_square", x_sqrt(9007199136250225.0) == 94906265.0);

    static const double angles[] = { 0.5, 1.0, 2.0, 3.0, -0.75 };
    for (unsigned i = 0; i < sizeof angles / sizeof angles[0]; i++)
        pf("sincos(%g) sin=%g cos=%g\n", angles[i], x_sin(angles[i]), x_cos(angles[i]));
    check("fsin_zero", x_sin(0.0) == 0.0);
    check("fcos_zero", x_cos(0.0) == 1.0);
    double at = x_atan2(1.0, 1.0);
    pf("fpatan(1,1) %g fldpi/4 %g\n", at, x_pi() / 4);
    check("fpatan_1_1_is_pi_over_4", at == x_pi() / 4);
    pf("fpatan(-2,3) %g\n", x_atan2(-2.0, 3.0));
    pf("fyl2x(1,8) %g fyl2x(3,10) %g fyl2x(1,e) %g\n", x_ylog2x(1.0, 8.0), x_ylog2x(3.0, 10.0), x_ylog2x(1.0, 2.718281828459045));
    check("fyl2x_log2_8_is_3", x_ylog2x(1.0, 8.0) == 3.0);
    pf("f2xm1(0.5) %g f2xm1(-0.25) %g\n", x_2xm1(0.5), x_2xm1(-0.25));
    pf("fscale(1.5,10) %g fscale(3,-4) %g\n", x_scale(1.5, 10.0), x_scale(3.0, -4.0));
    check("fscale_exact", x_scale(1.5, 10.0) == 1536.0);
    pf("fprem(100.5,7) %g fprem(-17.25,4) %g\n", x_prem(100.5, 7.0), x_prem(-17.25, 4.0));
    check("fprem_exact", x_prem(100.5, 7.0) == 2.5);
    pf("frndint(2.5) %g frndint(-3.5) %g frndint(7.49) %g\n", x_rndint(2.5), x_rndint(-3.5), x_rndint(7.49));
    check("frndint_ties_even", x_rndint(2.5) == 2.0 && x_rndint(-3.5) == -4.0);
    pf("fldl2e %g fldpi %g\n", x_l2e(), x_pi());

    /* conversions */
    double big = 9007199254740993.0; /* rounds to 2^53 */
    s64 cv = (s64)(-1234567.89);
    int ci = (int)(-2.75);
    u32 cu = (u32)3000000000.5;
    pf("conv big=%g s64=%lld int=%d u32=%u ll2d=%g\n", big, cv, ci, cu, (double)(s64)0x7ffffffffffffc00ll);
    check("conv_truncation", cv == -1234567 && ci == -2 && cu == 3000000000u);
    float f = (float)(1.0 / 3.0);
    pf("float third %g\n", (double)f);
    check("float_third_bits", dbits((double)f) == 0x3fd5555560000000ull);
}

/* The benchmark build (bench.elf) repeats the whole program. */
#ifndef ROUNDS
#define ROUNDS 1
#endif

/* The benchmark build inside Linux (cbench, -DPHASE_TIMES) times each part on the
 * guest's clock and prints the totals to stderr as "OX86-TIME <part> <seconds>", so
 * that scripts/bench-linux-session compares emulators part by part; stdout (and so
 * the checksum) is the same as without. */
#if defined(HOSTED) && defined(PHASE_TIMES)
#include <time.h>
static const char *const part_names[] = {"sieve", "hash", "u64", "sort", "dispatch", "x87"};
static double part_secs[6];
static double now_secs(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
#define TIMED(k, call) do { double t0_ = now_secs(); call; part_secs[k] += now_secs() - t0_; } while (0)
#else
#define TIMED(k, call) call
#endif

int cprog_run(void)
{
    pf("cprog start\n");
    for (int r = 0; r < ROUNDS; r++) {
        TIMED(0, test_sieve());
        TIMED(1, test_hash());
        TIMED(2, test_u64());
        TIMED(3, test_sort());
        TIMED(4, test_dispatch());
        TIMED(5, test_x87());
    }
    u32 sum = out_hash;
    pf("checksum %08x\n", sum);
#if defined(HOSTED) && defined(PHASE_TIMES)
    for (int k = 0; k < 6; k++)
        fprintf(stderr, "OX86-TIME %s %.6f\n", part_names[k], part_secs[k]);
#endif
    return failures;
}

#ifdef HOSTED
int main(void)
{
    int f = cprog_run();
    fputs(f ? "FAIL\n" : "PASS\n", stdout);
    return f ? 1 : 0;
}
#endif
