# nvme_boot.S - a 512-byte MBR boot sector for the SeaBIOS-boots-from-NVMe
# test. SeaBIOS loads it from the NVMe namespace (LBA 0) and jumps to it; it
# reads LBAs 1-8 through INT 13h (extended read, served by SeaBIOS's NVMe
# driver), checks a 16-byte signature at the start and the end of those
# 4 KiB, prints the verdict on COM1 and ends QEMU through isa-debug-exit
# (port 0xf4): 0x10 on success (QEMU exits 33), 0x01 on failure (exits 3).
# Assemble: as --32 -o b.o nvme_boot.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o b.bin b.o
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7c00, %sp
        sti
        cld
        mov     %dl, drive
        mov     $msg_mbr, %si
        call    puts
        mov     $0x42, %ah
        mov     drive, %dl
        mov     $dap, %si
        int     $0x13
        jc      fail
        mov     $0x8000, %si
        mov     $sig, %di
        mov     $16, %cx
        repe cmpsb
        jne     fail
        mov     $0x8ff0, %si
        mov     $sig, %di
        mov     $16, %cx
        repe cmpsb
        jne     fail
        mov     $msg_ok, %si
        call    puts
        mov     $0x10, %al
        out     %al, $0xf4
        hlt
fail:
        mov     $msg_fail, %si
        call    puts
        mov     $0x01, %al
        out     %al, $0xf4
hang:
        hlt
        jmp     hang

# Prints the NUL-terminated string at ds:si on COM1.
puts:
        lodsb
        test    %al, %al
        jz      2f
        mov     %al, %bl
1:      mov     $0x3fd, %dx
        in      %dx, %al
        test    $0x20, %al
        jz      1b
        mov     $0x3f8, %dx
        mov     %bl, %al
        out     %al, %dx
        jmp     puts
2:      ret

drive:  .byte 0
        .balign 4
dap:    .byte 0x10, 0           # size, reserved
        .word 8                 # sectors
        .word 0x8000, 0         # buffer offset, segment
        .quad 1                 # first LBA
sig:    .ascii "TRUSTDEV-NVMEBT!"
msg_mbr: .asciz "NVME-BOOT: MBR loaded by SeaBIOS\r\n"
msg_ok:  .asciz "NVME-BOOT-OK: LBA 1-8 read through INT 13h\r\n"
msg_fail: .asciz "NVME-BOOT-FAIL\r\n"
        .org 510
        .byte 0x55, 0xaa
