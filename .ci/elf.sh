# .ci/elf.sh — sourced by deb.sh and deb-test.sh: what a binary is, from its ELF header alone
# (od from coreutils; no `file`, no binutils).

# elf_arch FILE -> the Debian architecture: amd64, arm64, armhf, armel, i386; `arm` for a 32-bit
# ARM binary that marks neither float ABI; `not-elf` or `machine-N` otherwise.
elf_arch() {
  local f=$1 magic class machine flags
  magic=$(od -An -tx1 -N4 "$f" 2>/dev/null | tr -d ' \n')
  [ "$magic" = 7f454c46 ] || { echo not-elf; return; }
  class=$(od -An -tu1 -j4 -N1 "$f" | tr -d ' ')                       # 1: 32-bit, 2: 64-bit
  machine=$(od -An -tu2 -j18 -N2 --endian=little "$f" | tr -d ' ')   # e_machine
  case "$machine:$class" in
    62:2)  echo amd64 ;;
    183:2) echo arm64 ;;
    3:1)   echo i386 ;;
    40:1)
      flags=$(od -An -tu4 -j36 -N4 --endian=little "$f" | tr -d ' ')  # e_flags of ELF32
      if (( flags & 0x400 )); then echo armhf      # EF_ARM_ABI_FLOAT_HARD
      elif (( flags & 0x200 )); then echo armel    # EF_ARM_ABI_FLOAT_SOFT
      else echo arm; fi ;;
    *) echo "machine-$machine" ;;
  esac
}
