/* Minimal stand-in for Jailhouse's hypervisor/include/jailhouse/types.h:
 * just the fixed-width integer names the config structures use. */
#ifndef OXEMU_TEST_JAILHOUSE_TYPES_H
#define OXEMU_TEST_JAILHOUSE_TYPES_H
typedef unsigned char u8, __u8;
typedef unsigned short u16, __u16;
typedef unsigned int u32, __u32;
typedef unsigned long long u64, __u64;
#endif
