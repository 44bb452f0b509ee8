/* Syscall probes the sandbox-security tests run inside a sandbox where Python's ctypes cannot
 * reach (another ABI). Prints one line "<name> ret=<r> errno=<e>" per probe.
 *   berth-probe int80     getpid() through the i386 ABI (int $0x80)
 *   berth-probe x32       getpid() with the x32 bit set */
#include <errno.h>
#include <stdio.h>
#include <string.h>

static long int80_getpid(void)
{
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory"); /* i386 getpid = 20 */
    return ret;
#else
    return -ENOSYS;
#endif
}

static long x32_getpid(void)
{
#if defined(__x86_64__)
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 39L) : "rcx", "r11", "memory");
    return ret;
#else
    return -ENOSYS;
#endif
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: berth-probe int80|x32\n");
        return 2;
    }
    long r;
    if (strcmp(argv[1], "int80") == 0)
        r = int80_getpid();
    else if (strcmp(argv[1], "x32") == 0)
        r = x32_getpid();
    else
        return 2;
    printf("%s ret=%ld errno=%ld\n", argv[1], r < 0 ? -1L : r, r < 0 ? -r : 0L);
    return 0;
}
