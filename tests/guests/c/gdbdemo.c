/*
 * gdbdemo.c -- a small bare-metal program for the GDB tests (tests/gdb.rs), built
 * with -O0 -g by scripts/build-guests and linked with entry.asm: a loop that calls
 * two functions and adds to a global, so that a debugger can break on a function,
 * step, print variables, watch the global and go back over its writes; then a loop
 * hot enough for the JIT, which stores its counter to a global every iteration,
 * and its sum to another every 65536 iterations through note_spin().
 * Prints "gdbdemo total 55 counter 15 spin N", then PASS (exit 0x10) when the
 * first two are right.
 */
void guest_putc(int c);

volatile unsigned counter;
unsigned results[6];

static void put_str(const char *s)
{
    while (*s)
        guest_putc(*s++);
}

static void put_dec(unsigned v)
{
    char b[12];
    int n = 0;
    do {
        b[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        guest_putc(b[--n]);
}

__attribute__((noinline)) unsigned square(unsigned x)
{
    unsigned y = x * x;
    return y;
}

__attribute__((noinline)) void bump(unsigned by)
{
    counter += by;
}

volatile unsigned spin, spin_i;

/* On pages of their own: compiled code calls (chains) from one page to the other. */
__attribute__((noinline, aligned(4096))) void note_spin(unsigned acc)
{
    spin = acc;
}

__attribute__((noinline, aligned(4096))) unsigned spin_loop(unsigned n)
{
    unsigned acc = 0;
    for (unsigned i = 0; i < n; i++) {
        acc += i ^ (acc >> 3);
        spin_i = i;
        if ((i & 0xffff) == 0xffff)
            note_spin(acc);
    }
    return acc;
}

int cprog_run(void)
{
    unsigned total = 0;
    for (unsigned i = 1; i <= 5; i++) {
        unsigned s = square(i);
        results[i] = s;
        total += s;
        bump(i);
    }
    put_str("gdbdemo total ");
    put_dec(total);
    put_str(" counter ");
    put_dec(counter);
    put_str(" spin ");
    put_dec(spin_loop(1000000));
    put_str("\n");
    return total == 55 && counter == 15 ? 0 : 1;
}
