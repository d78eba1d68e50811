set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e7_small_batches.png'
set grid
set key outside right
set title 'Test accuracy vs (virtual) batch size, 3x100 sigmoid, 5 seeds'
set xlabel 'batch size (ghost: virtual batch size inside batches of 60)'
set ylabel 'test accuracy (mean, sd)'; set logscale x 2; set xtics (2, 4, 8, 60)
set datafile missing 'nan'; set key inside bottom right
plot 'e7.dat' u 1:2:3 w yerrorlines lw 2 lc 1 t 'batch norm, eval', '' u 1:4:5 w yerrorlines lw 1 dt 2 lc 1 t 'batch norm, train mode', '' u 1:6:7 w yerrorlines lw 2 lc 2 t 'batch renorm, eval', '' u 1:8:9 w yerrorlines lw 1 dt 2 lc 2 t 'batch renorm, train mode', '' u 1:10:11 w yerrorlines lw 2 lc 3 t 'ghost BN (batch 60), eval', '' u 1:12:13 w yerrorlines lw 1 dt 2 lc 3 t 'ghost BN (batch 60), train mode'
