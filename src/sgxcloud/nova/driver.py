class SGXLibvirtDriver: pass
