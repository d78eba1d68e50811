set terminal pngcairo size 900,520 font 'Helvetica,11'
set output 'e4_batch_size.png'
set grid
set key outside right
set title 'Test accuracy vs training batch size (3x100 sigmoid + BN), 5 seeds'
set xlabel 'batch size'; set ylabel 'test accuracy (mean, sd)'
set logscale x 2; set xtics (2, 4, 8, 16, 60)
plot 'e4.dat' u 1:2:3 w yerrorlines lw 2 t 'eval mode (running statistics)', '' u 1:4:5 w yerrorlines lw 2 t 'train mode (statistics of test batches of that size)'
