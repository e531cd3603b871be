/* A USDT probe written as the .note.stapsdt entry (version 3 note) sys/sdt.h emits, without the
 * systemtap headers (systemtap-sdt-dev is not installed here). TP_USDT(provider, name, argspec,
 * operands...): argspec is the note's argument string, e.g. "8@%[a] -4@%[b]" (size, negative when
 * signed, '@', the operand's location as the assembler prints it); operands are asm input operands
 * named as in argspec, e.g. [a] "r"(x), [b] "m"(y). No semaphore: the probe always fires.
 * TP_USDT_SEM(provider, name, semaphore, argspec, operands...): the same with the note naming a
 * semaphore (the symbol of a `volatile unsigned short` in section .probes, as sys/sdt.h names it
 * provider_name_semaphore); the program guards the probe with `if (semaphore)`, so it fires only
 * while a tracer (the kernel, for a uprobe with a reference counter) keeps the semaphore non-zero. */
#ifndef TETRAPIPE_USDT_NOTE_H
#define TETRAPIPE_USDT_NOTE_H
#define TP_USDT(provider, name, argspec, ...) TP_USDT_SEM(provider, name, "0", argspec, __VA_ARGS__)
#define TP_USDT_SEM(provider, name, semaphore, argspec, ...)                          \
    __asm__ __volatile__(                                                             \
        "990: nop\n"                                                                  \
        ".pushsection .note.stapsdt,\"?\",\"note\"\n"                                 \
        ".balign 4\n"                                                                 \
        ".4byte 992f-991f, 994f-993f, 3\n"                                            \
        "991: .asciz \"stapsdt\"\n"                                                   \
        "992: .balign 4\n"                                                            \
        "993: .8byte 990b\n"                                                          \
        ".8byte _.stapsdt.base\n"                                                     \
        ".8byte " semaphore "\n"                                                      \
        ".asciz \"" provider "\"\n"                                                   \
        ".asciz \"" name "\"\n"                                                       \
        ".asciz \"" argspec "\"\n"                                                    \
        "994: .balign 4\n"                                                            \
        ".popsection\n"                                                               \
        ".ifndef _.stapsdt.base\n"                                                    \
        ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n"       \
        ".weak _.stapsdt.base\n"                                                      \
        ".hidden _.stapsdt.base\n"                                                    \
        "_.stapsdt.base: .space 1\n"                                                  \
        ".size _.stapsdt.base, 1\n"                                                   \
        ".popsection\n"                                                               \
        ".endif\n"                                                                    \
        :: __VA_ARGS__)
#endif
