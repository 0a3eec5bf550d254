/* A stand-in for Windows' bcryptprimitives.dll, for running the Windows test binaries under
 * Debian's wine 8.0, which lacks it. Rust's standard library (1.78 and later) takes its
 * randomness from ProcessPrng there; this gives it the system's RtlGenRandom, the generator
 * ProcessPrng wraps on Windows. Test use only: never shipped. */
#include <windows.h>

#define RtlGenRandom SystemFunction036
BOOLEAN NTAPI RtlGenRandom(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
